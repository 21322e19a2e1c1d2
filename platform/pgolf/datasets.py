"""Data preparation: the offline demo corpus (demo_corpus.py, text from demo_text.py) and the official
FineWeb download (fineweb.py). Both produce the challenge layout, so trainers and configs never care
which one they read:

    <out>/datasets/fineweb10B_sp<V>/fineweb_{train,val}_NNNNNN.bin
    <out>/tokenizers/fineweb_<V>_bpe.model (+ .vocab)
    <out>/manifest.json

Torch and SentencePiece are imported inside the functions that need them (platform rule: importing
`pgolf.*` stays cheap). This module is the public face; the work lives in the three modules above.
"""
from __future__ import annotations

from pgolf.datacommon import DataError, MANIFEST_NAME, default_data_dir
from pgolf.demo_corpus import (DEMO_DATASET, DEMO_TOKENIZER_FILE, DEMO_VOCAB_SIZE, DEMO_VOCAB_SIZES, DemoManifest,
                               build_demo, demo_dir_name, demo_layout, ensure_demo, verify_manifest)
from pgolf.demo_text import DEMO_MODULES, collect_demo_documents
from pgolf.fineweb import FINEWEB_REPO_ID, FinewebDownload, download_fineweb, variant_repo

__all__ = [
    "DataError", "DemoManifest", "FinewebDownload", "DEMO_DATASET", "DEMO_TOKENIZER_FILE", "DEMO_MODULES",
    "DEMO_VOCAB_SIZE", "DEMO_VOCAB_SIZES", "FINEWEB_REPO_ID", "MANIFEST_NAME", "default_data_dir",
    "collect_demo_documents", "build_demo", "ensure_demo", "verify_manifest", "demo_layout", "demo_dir_name",
    "download_fineweb", "variant_repo",
]
