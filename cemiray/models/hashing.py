"""The one content hash of a model (models): `model_hash(url)`.

It is what `/v1/models`, the lineage columns of generated rows, the experiment's stage cache and
the model cards all call a model's SHA-256.

`model_hash(url)` names a model by what it holds, wherever it is stored:
- a file (an `.onnx` recogniser, an arcface_torch `.pth`; a `?arch=...` query is a loading
  option, not content, and is dropped): the SHA-256 of its bytes, as `sha256sum` prints it;
- a folder (a cemiray model folder, a CemiFace/diffusers pipeline folder with its
  sub-folders): the SHA-256 of the text `sha256sum` prints for its files, one line
  "<sha256 of the file's bytes>  <relative path>\\n" per file, in ascending order of the
  relative path ('/'-separated). That text is also the "Files" section of a model card, so the
  card's lines give the same hash (cemiray.assets.cards).

A folder's hash covers every file in it, configs and weights alike (a changed scheduler config
changes the samples as surely as changed weights), except files that describe rather than make
the model: the model card (MODEL_CARD.md) and hidden files or folders (a leading '.').
The module reads files through cemiray.data.storage (fsspec) and imports no torch or Ray.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from cemiray.data import storage

CARD_NAME = "MODEL_CARD.md"
BLOCK = 16 << 20


def is_model_file(relative_path: str) -> bool:
    """Whether a file (path relative to the model folder) is part of the model's hash."""
    parts = relative_path.split("/")
    return parts[-1] != CARD_NAME and not any(p.startswith(".") for p in parts)


def file_sha256(fs: Any, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while chunk := f.read(BLOCK):
            digest.update(chunk)
    return digest.hexdigest()


def hash_lines(file_hashes: Iterable[tuple[str, str]]) -> str:
    """The model hash of a folder from (relative path, SHA-256 of the file) pairs."""
    text = "".join(f"{sha}  {rel}\n" for rel, sha in sorted(file_hashes))
    return hashlib.sha256(text.encode()).hexdigest()


def folder_file_hashes(url: str) -> dict[str, str]:
    """Relative path → SHA-256 of every file of a model folder that its hash covers."""
    fs, path = storage.filesystem(url)
    root = path.rstrip("/")
    out = {}
    for file in fs.find(root):
        rel = file[len(root):].lstrip("/")
        if is_model_file(rel):
            out[rel] = file_sha256(fs, file)
    return out


def model_hash(url: str) -> str:
    """SHA-256 hex of a model file or folder (see the module docstring for what it covers)."""
    base = str(url).partition("?")[0]
    fs, path = storage.filesystem(base)
    if not fs.exists(path):
        raise FileNotFoundError(f"{url}: not found (no such file or folder)")
    if not fs.isdir(path):
        return file_sha256(fs, path)
    files = folder_file_hashes(base)
    if not files:
        raise FileNotFoundError(f"{url}: the folder holds no model files")
    return hash_lines(files.items())
