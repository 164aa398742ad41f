"""One URI names any face dataset, so that every job takes a single string:

    toyfaces:?seed=0&ids=0-499&samples=20&size=32&difficulty=1.0
    parquet:<file or folder url>      recordio:<folder or .rec url>     imagefolder:<root url>
    orl:<root url>  (or `orl:` for the ORL copy beside the project)   bin:<verification .bin url>

Rows are face rows (`image`, `label`, `sample`, metadata). Shard k of K holds the contiguous
block of rows [n·k/K, n·(k+1)/K) of the source's fixed order, so parallel readers partition a
source deterministically without talking to each other.

ToyFaces labels are positions in the `ids` list; metadata: `identity` (the world's id), its
attributes (`group`, `age`, `sex`) and `nuisance` (a dict);
`.bin` rows are unlabelled (label −1) and carry `pair` and `issame`."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

from cemiray.data import storage

KINDS = ("toyfaces", "parquet", "recordio", "imagefolder", "orl", "bin")
TOYFACES_DEFAULTS = {"seed": "0", "size": "32", "difficulty": "1.0"}
TOYFACES_REQUIRED = ("ids", "samples")
RENDER_BATCH = 256


class SourceError(ValueError):
    """A malformed source URI; the message quotes it."""


def parse_ids(text: str) -> list[int]:
    """'0-499' (inclusive) or '3,7,10-12' → identity ids, in the order given, without repeats."""
    ids: list[int] = []
    for part in text.split(","):
        first, dash, last = part.strip().partition("-")
        try:
            span = range(int(first), int(last) + 1) if dash else [int(first)]
            if not span:
                raise ValueError
            ids.extend(span)
        except ValueError:
            message = f"ids={text!r}: expected ranges like '0-499' or '3,7,10-12'"
            raise SourceError(message) from None
    if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
        raise SourceError(f"ids={text!r}: expected a non-empty list of distinct ids ≥ 0")
    return ids


def _block(n: int, shard: int, num_shards: int) -> range:
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise SourceError(f"shard {shard} of {num_shards}: need 0 ≤ shard < num_shards")
    return range(n * shard // num_shards, n * (shard + 1) // num_shards)


@dataclass
class FaceSource:
    """A parsed source URI; `str(source)` gives the URI back."""

    kind: str
    url: str = ""
    params: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        if self.kind == "toyfaces":
            return "toyfaces:?" + "&".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.kind}:{self.url}"

    def _toyfaces(self):
        from cemiray.data.toyfaces import ToyFacesWorld

        p = self.params
        world = ToyFacesWorld(seed=int(p["seed"]), size=int(p["size"]),
                              difficulty=float(p["difficulty"]))
        return world, parse_ids(p["ids"]), int(p["samples"])

    def _parquet_files(self) -> tuple[list[str], list[int]]:
        from cemiray.data.parquet_shards import list_shards, shard_num_rows

        fs, path = storage.filesystem(self.url)
        if fs.isfile(path):
            files = [self.url]
        elif fs.isdir(path):
            files = list_shards(self.url)
        else:
            raise storage.StorageError(f"{self.url}: no such Parquet file or folder")
        return files, [shard_num_rows(f) for f in files]

    def num_rows(self) -> int:
        if self.kind == "toyfaces":
            return len(parse_ids(self.params["ids"])) * int(self.params["samples"])
        if self.kind == "parquet":
            return sum(self._parquet_files()[1])
        if self.kind == "recordio":
            from cemiray.data.recordio import RecordIODataset

            return len(RecordIODataset(self.url))
        if self.kind == "imagefolder":
            from cemiray.data.imagefolder import index_imagefolder

            return len(index_imagefolder(self.url))
        if self.kind == "orl":
            from cemiray.data.orl import IMAGES_PER_SUBJECT, NUM_SUBJECTS

            return NUM_SUBJECTS * IMAGES_PER_SUBJECT
        from cemiray.data.verification_bin import load_bin

        return len(load_bin(self.url)[0])

    def num_classes(self) -> int:
        """Number of identity labels (0 for an unlabelled `.bin`)."""
        if self.kind == "toyfaces":
            return len(parse_ids(self.params["ids"]))
        if self.kind == "parquet":
            from cemiray.data.parquet_shards import max_label

            files = self._parquet_files()[0]
            return max((max_label(f) for f in files), default=-1) + 1
        if self.kind == "recordio":
            from cemiray.data.recordio import RecordIODataset

            return RecordIODataset(self.url).num_classes()
        if self.kind == "imagefolder":
            from cemiray.data.imagefolder import class_names

            return len(class_names(self.url))
        if self.kind == "orl":
            from cemiray.data.orl import NUM_SUBJECTS

            return NUM_SUBJECTS
        return 0

    def iter_rows(self, shard: int = 0, num_shards: int = 1) -> Iterator[dict]:
        """Face rows of shard `shard` of `num_shards` (see the module docstring)."""
        reader = getattr(self, f"_rows_{self.kind}")
        yield from reader(shard, num_shards)

    def _rows_toyfaces(self, shard: int, num_shards: int) -> Iterator[dict]:
        from cemiray.data.images import encode_png

        world, ids, samples = self._toyfaces()
        block = _block(len(ids) * samples, shard, num_shards)
        for start in range(block.start, block.stop, RENDER_BATCH):
            index = range(start, min(start + RENDER_BATCH, block.stop))
            identities = [ids[i // samples] for i in index]
            sample_ids = [i % samples for i in index]
            images, nuisances = world.render_batch(identities, sample_ids)
            for i, image, identity, sample, nuisance in zip(
                index, images, identities, sample_ids, nuisances, strict=True
            ):
                yield {"image": encode_png(image), "label": i // samples, "sample": sample,
                       "identity": identity, **world.attributes(identity), "nuisance": nuisance}

    def _rows_parquet(self, shard: int, num_shards: int) -> Iterator[dict]:
        from cemiray.data.parquet_shards import iter_shard

        files, counts = self._parquet_files()
        block = _block(sum(counts), shard, num_shards)
        first = 0
        for url, count in zip(files, counts, strict=True):
            lo, hi = max(block.start - first, 0), min(block.stop - first, count)
            if lo < hi:
                yield from itertools.islice(iter_shard(url), lo, hi)
            first += count

    def _rows_recordio(self, shard: int, num_shards: int) -> Iterator[dict]:
        from cemiray.data.recordio import RecordIODataset

        dataset = RecordIODataset(self.url)
        try:
            for i in _block(len(dataset), shard, num_shards):
                yield dataset[i]
        finally:
            dataset.close()

    def _rows_imagefolder(self, shard: int, num_shards: int) -> Iterator[dict]:
        from cemiray.data.imagefolder import index_imagefolder, load_entry

        entries = index_imagefolder(self.url)
        for i in _block(len(entries), shard, num_shards):
            yield load_entry(entries[i])

    def _rows_orl(self, shard: int, num_shards: int) -> Iterator[dict]:
        from cemiray.data.orl import read_orl

        rows = read_orl(self.url)
        for i in _block(len(rows), shard, num_shards):
            yield rows[i]

    def _rows_bin(self, shard: int, num_shards: int) -> Iterator[dict]:
        from cemiray.data.verification_bin import load_bin

        images, issame = load_bin(self.url)
        for i in _block(len(images), shard, num_shards):
            yield {"image": images[i], "label": -1, "sample": i, "pair": i // 2,
                   "issame": issame[i // 2]}


def _toyfaces_params(uri: str, rest: str) -> dict[str, str]:
    if rest and not rest.startswith("?"):
        raise SourceError(f"{uri!r}: toyfaces takes no URL, only parameters "
                          "('toyfaces:?ids=0-99&samples=10')")
    try:
        pairs = parse_qsl(rest[1:], keep_blank_values=True, strict_parsing=bool(rest[1:]))
    except ValueError as exc:
        raise SourceError(f"{uri!r}: malformed parameters ({exc})") from None
    params = dict(TOYFACES_DEFAULTS)
    given = [key for key, _ in pairs]
    repeated = sorted({k for k in given if given.count(k) > 1})
    unknown = sorted(set(given) - set(TOYFACES_DEFAULTS) - set(TOYFACES_REQUIRED))
    missing = [k for k in TOYFACES_REQUIRED if k not in given]
    if repeated or unknown or missing:
        known = list(TOYFACES_REQUIRED) + list(TOYFACES_DEFAULTS)
        raise SourceError(f"{uri!r}: repeated {repeated}, unknown {unknown}, missing {missing} "
                          f"parameters (known: {known})")
    params.update(pairs)
    checks = {"seed": (int, 0), "size": (int, 1), "samples": (int, 1), "difficulty": (float, 0)}
    for key, (kind, least) in checks.items():
        try:
            ok = kind(params[key]) >= least
        except ValueError:
            ok = False
        if not ok:
            raise SourceError(f"{uri!r}: {key}={params[key]!r} is not a {kind.__name__} ≥ {least}")
    try:
        parse_ids(params["ids"])
    except SourceError as exc:
        raise SourceError(f"{uri!r}: {exc}") from None
    return {k: params[k] for k in ("seed", "ids", "samples", "size", "difficulty")}


def parse_source(uri: str) -> FaceSource:
    """`<kind>:<url or ?params>` → FaceSource; unknown kinds and bad parameters raise here."""
    kind, sep, rest = str(uri).partition(":")
    kind = kind.strip().lower()
    if not sep or kind not in KINDS:
        raise SourceError(f"{uri!r}: expected '<kind>:<url>' with kind one of {KINDS}")
    if kind == "toyfaces":
        return FaceSource(kind, "", _toyfaces_params(uri, rest))
    if kind == "orl" and not rest:
        from cemiray.data.orl import DEFAULT_ORL_ROOT

        rest = DEFAULT_ORL_ROOT
    if not rest:
        raise SourceError(f"{uri!r}: {kind} needs a URL ('{kind}:<path or url>')")
    return FaceSource(kind, storage.absolute(rest), {})
