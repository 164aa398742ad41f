"""Storage (data): every path is an fsspec URL; finished artefacts are written atomically.

fsspec-backed storage: every path the project takes is a URL (local path, file://, memory://,
s3://, gs://, ...). Writes that produce a finished artefact go through a temporary name and a
rename, so a reader never sees half of a file."""

from __future__ import annotations

import os
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import fsspec
from fsspec.core import url_to_fs


class StorageError(OSError):
    """A path could not be read or written; the message names the URL."""


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem of a URL and the path inside it."""
    try:
        return url_to_fs(str(url))
    except (ImportError, ValueError) as exc:
        raise StorageError(f"{url}: no filesystem for this URL ({exc})") from exc


def protocol_prefix(url: str) -> str:
    """The scheme part of a URL ('memory://', 's3://'), '' for a plain local path."""
    url = str(url)
    return url[: url.index("://") + 3] if "://" in url else ""


def absolute(url: str | None) -> str | None:
    """A relative local path made absolute (Ray workers run in other folders); URLs unchanged."""
    if url is None or "://" in str(url):
        return url
    return os.path.abspath(os.path.expanduser(str(url)))


def join(url: str, *parts: str) -> str:
    url = str(url)
    if "://" in url:
        prefix, rest = url.split("://", 1)
        return f"{prefix}://" + posixpath.join(rest, *parts)
    return posixpath.join(url, *parts)


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def makedirs(url: str) -> None:
    fs, path = filesystem(url)
    fs.makedirs(path, exist_ok=True)


def listdir(url: str) -> list[str]:
    """Names (not paths) directly under a folder URL, sorted."""
    fs, path = filesystem(url)
    if not fs.isdir(path):
        raise StorageError(f"{url}: not a folder")
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    try:
        with fs.open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as exc:
        raise StorageError(f"{url}: no such file") from exc


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def remove(url: str, recursive: bool = False) -> None:
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=recursive)


@contextmanager
def atomic_open(url: str, mode: str = "wb") -> Iterator:
    """Open a temporary sibling of `url` for writing; rename it to `url` only if the block ends
    without an exception. On failure the temporary file is removed and `url` is untouched."""
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_open supports 'wb' and 'w', not {mode!r}")
    fs, path = filesystem(url)
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    tmp = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(path)}")
    try:
        with fs.open(tmp, mode) as f:
            yield f
        fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):
            fs.rm(tmp)
        raise


OBJECT_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})


def atomic_write_bytes(url: str, data: bytes) -> None:
    """Write `data` so that `url` is either absent or whole: on object stores one put (a PUT is
    atomic there, and a rename would be a copy), elsewhere a temporary sibling renamed."""
    if protocol_prefix(url).removesuffix("://") in OBJECT_STORES:
        fs, path = filesystem(url)
        fs.pipe_file(path, data)
        return
    with atomic_open(url, "wb") as f:
        f.write(data)


def atomic_write_text(url: str, text: str) -> None:
    atomic_write_bytes(url, text.encode("utf-8"))
