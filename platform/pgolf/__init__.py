"""pgolf: experiment platform for the OpenAI Parameter Golf challenge.

This package (the platform) never imports torch, Ray or MLflow at import time; the trainer lives in
`pgolf.trainers` and is imported lazily by the commands that need it.
"""
__version__ = "0.1.0"
