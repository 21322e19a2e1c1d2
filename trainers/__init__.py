"""pgolf.trainers: the shared trainer -> quantizer -> eval pipeline.

Imports only torch, numpy, sentencepiece and zstandard (flash-attn optional) so it runs under
`torchrun` on a bare GPU machine without Ray or MLflow.
"""
