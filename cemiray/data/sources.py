"""Face sources (data part): one typed `Source`, parsed once from a URI, names any face dataset.

Every job takes a single string and passes the parsed object on:

    toyfaces:?seed=0&ids=0-499&samples=20&size=32&difficulty=1.0
    parquet:<file or folder url>      recordio:<folder or .rec url>     imagefolder:<root url>
    orl:<root url>  (or `orl:` for the ORL copy beside the project)   bin:<verification .bin url>

Paths are made absolute when the source is made (Ray workers run in other folders), and
`Source.uri` gives the canonical string back. Rows are face rows (`image`, `label`, `sample`,
metadata). Shard k of K holds the contiguous block of rows [n·k/K, n·(k+1)/K) of the source's
fixed order, so parallel readers partition a source deterministically without talking.

ToyFaces labels are positions in the `ids` list; metadata: `identity` (the world's id), its
attributes (`group`, `age`, `sex`) and `nuisance` (a dict);
`.bin` rows are unlabelled (label −1) and carry `pair` and `issame`."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl

from cemiray.data import storage
from cemiray.data.imagefolder import class_names, index_imagefolder, load_entry
from cemiray.data.images import encode_png
from cemiray.data.orl import DEFAULT_ORL_ROOT, IMAGES_PER_SUBJECT, NUM_SUBJECTS, read_orl
from cemiray.data.parquet_shards import iter_shard, list_shards, max_label, shard_num_rows
from cemiray.data.recordio import RecordIODataset
from cemiray.data.toyfaces import ToyFacesWorld
from cemiray.data.verification_bin import load_bin

KINDS = ("toyfaces", "parquet", "recordio", "imagefolder", "orl", "bin")
TOYFACES_DEFAULTS = {"seed": "0", "size": "32", "difficulty": "1.0"}
TOYFACES_REQUIRED = ("ids", "samples")
TOYFACES_CHECKS = {"seed": (int, 0), "size": (int, 1), "samples": (int, 1),
                   "difficulty": (float, 0)}
RENDER_BATCH = 256


class SourceError(ValueError):
    """A malformed source URI; the message quotes it."""


def parse_id_spans(text: str) -> tuple[range, ...]:
    """'0-499' (inclusive) or '3,7,10-12' → identity ids as ranges, in the order given (adjacent
    ranges merged); repeats, negative ids and empty lists raise."""
    spans: list[range] = []
    for part in str(text).split(","):
        first, dash, last = part.strip().partition("-")
        try:
            span = range(int(first), (int(last) if dash else int(first)) + 1)
            if not span:
                raise ValueError
        except ValueError:
            message = f"ids={text!r}: expected ranges like '0-499' or '3,7,10-12'"
            raise SourceError(message) from None
        spans.append(span)
    ordered = sorted(spans, key=lambda s: s.start)
    overlap = any(b.start < a.stop for a, b in itertools.pairwise(ordered))
    if not spans or overlap or ordered[0].start < 0:
        raise SourceError(f"ids={text!r}: expected a non-empty list of distinct ids ≥ 0")
    return _merge(spans)


def parse_ids(text: str) -> list[int]:
    """'0-499' (inclusive) or '3,7,10-12' → identity ids, in the order given, without repeats."""
    return [i for span in parse_id_spans(text) for i in span]


def _merge(spans: Iterable[range]) -> tuple[range, ...]:
    merged: list[range] = []
    for span in spans:
        if merged and merged[-1].stop == span.start:
            merged[-1] = range(merged[-1].start, span.stop)
        else:
            merged.append(span)
    return tuple(merged)


def _block(n: int, shard: int, num_shards: int) -> range:
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise SourceError(f"shard {shard} of {num_shards}: need 0 ≤ shard < num_shards")
    return range(n * shard // num_shards, n * (shard + 1) // num_shards)


@dataclass(frozen=True)
class ToyFacesParams:
    """What a `toyfaces:` source renders: `samples` images of each identity in `ids` (ranges,
    in order) from the world (seed, size, difficulty)."""

    ids: tuple[range, ...]
    samples: int
    seed: int = 0
    size: int = 32
    difficulty: float = 1.0

    @property
    def identities(self) -> list[int]:
        return [i for span in self.ids for i in span]

    @property
    def num_ids(self) -> int:
        return sum(len(span) for span in self.ids)

    @property
    def ids_text(self) -> str:
        return ",".join(f"{s.start}-{s.stop - 1}" if len(s) > 1 else str(s.start)
                        for s in self.ids)

    def world(self) -> ToyFacesWorld:
        return ToyFacesWorld(seed=self.seed, size=self.size, difficulty=self.difficulty)


@dataclass(frozen=True)
class Source:
    """A parsed face source: `kind`, an absolute `url` (empty for ToyFaces) and, for ToyFaces,
    its `toy` parameters. Make one with `Source.parse(text)`, `Source.toyfaces(...)` or
    `Source.at(kind, url)`; `.uri` (and `str()`) gives the canonical URI back."""

    kind: str
    url: str = ""
    toy: ToyFacesParams | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise SourceError(f"{self.kind!r}: expected a source kind, one of {KINDS}")
        if (self.kind == "toyfaces") != (self.toy is not None):
            raise SourceError(f"{self.kind}: ToyFaces parameters go with toyfaces sources only")
        if self.kind != "toyfaces":
            if not self.url:
                raise SourceError(f"{self.kind!r}: {self.kind} needs a URL "
                                  f"('{self.kind}:<path or url>')")
            object.__setattr__(self, "url", storage.absolute(self.url))

    # --- making one --------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str | Source) -> Source:
        """`<kind>:<url or ?params>` → Source (a Source is returned as it is); unknown kinds and
        bad parameters raise a SourceError that quotes the text."""
        if isinstance(text, Source):
            return text
        kind, sep, rest = str(text).partition(":")
        kind = kind.strip().lower()
        if not sep or kind not in KINDS:
            raise SourceError(f"{text!r}: expected '<kind>:<url>' with kind one of {KINDS}")
        if kind == "toyfaces":
            return cls("toyfaces", "", _toyfaces_params(str(text), rest))
        if kind == "orl" and not rest:
            rest = DEFAULT_ORL_ROOT
        if not rest:
            raise SourceError(f"{text!r}: {kind} needs a URL ('{kind}:<path or url>')")
        return cls(kind, rest)

    @classmethod
    def at(cls, kind: str, url: str) -> Source:
        """A file-backed source (`parquet`, `recordio`, `imagefolder`, `orl`, `bin`) at `url`."""
        if kind == "toyfaces":
            raise SourceError("toyfaces sources have no URL: use Source.toyfaces(...)")
        return cls(kind, url)

    @classmethod
    def toyfaces(cls, ids: range | Iterable[int] | str, samples: int, seed: int = 0,
                 size: int = 32, difficulty: float = 1.0) -> Source:
        """A ToyFaces source: `samples` images of each identity of `ids` (a range, ids or the
        URI's text), checked as a parsed URI is."""
        if isinstance(ids, str):
            spans = parse_id_spans(ids)
        elif isinstance(ids, range) and ids.step == 1:
            spans = (ids,)
        else:
            spans = parse_id_spans(",".join(str(int(i)) for i in ids) or "")
        if not spans or not spans[0]:
            raise SourceError(f"ids={ids!r}: expected a non-empty list of distinct ids ≥ 0")
        toy = ToyFacesParams(ids=spans, samples=int(samples), seed=int(seed), size=int(size),
                             difficulty=float(difficulty))
        for key, (kind, least) in TOYFACES_CHECKS.items():
            if getattr(toy, key) < least:
                raise SourceError(f"{_uri(toy)!r}: {key}={getattr(toy, key)!r} is not a "
                                  f"{kind.__name__} ≥ {least}")
        if spans[0].start < 0:
            raise SourceError(f"{_uri(toy)!r}: ids must be ≥ 0")
        return cls("toyfaces", "", toy)

    # --- what it is --------------------------------------------------------------------------

    @property
    def uri(self) -> str:
        """The canonical URI: parsing it gives an equal Source."""
        if self.toy is not None:
            return _uri(self.toy)
        return f"{self.kind}:{self.url}"

    def __str__(self) -> str:
        return self.uri

    def _parquet_files(self) -> tuple[list[str], list[int]]:
        fs, path = storage.filesystem(self.url)
        if fs.isfile(path):
            files = [self.url]
        elif fs.isdir(path):
            files = list_shards(self.url)
        else:
            raise storage.StorageError(f"{self.url}: no such Parquet file or folder")
        return files, [shard_num_rows(f) for f in files]

    def num_rows(self) -> int:
        if self.toy is not None:
            return self.toy.num_ids * self.toy.samples
        if self.kind == "parquet":
            return sum(self._parquet_files()[1])
        if self.kind == "recordio":
            return len(RecordIODataset(self.url))
        if self.kind == "imagefolder":
            return len(index_imagefolder(self.url))
        if self.kind == "orl":
            return NUM_SUBJECTS * IMAGES_PER_SUBJECT
        return len(load_bin(self.url)[0])

    def num_classes(self) -> int:
        """Number of identity labels (0 for an unlabelled `.bin`)."""
        if self.toy is not None:
            return self.toy.num_ids
        if self.kind == "parquet":
            files = self._parquet_files()[0]
            return max((max_label(f) for f in files), default=-1) + 1
        if self.kind == "recordio":
            return RecordIODataset(self.url).num_classes()
        if self.kind == "imagefolder":
            return len(class_names(self.url))
        if self.kind == "orl":
            return NUM_SUBJECTS
        return 0

    # --- reading -----------------------------------------------------------------------------

    def iter_rows(self, shard: int = 0, num_shards: int = 1) -> Iterator[dict]:
        """Face rows of shard `shard` of `num_shards` (see the module docstring)."""
        reader = getattr(self, f"_rows_{self.kind}")
        yield from reader(shard, num_shards)

    def _rows_toyfaces(self, shard: int, num_shards: int) -> Iterator[dict]:
        toy = self.toy
        world, ids, samples = toy.world(), toy.identities, toy.samples
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
        files, counts = self._parquet_files()
        block = _block(sum(counts), shard, num_shards)
        first = 0
        for url, count in zip(files, counts, strict=True):
            lo, hi = max(block.start - first, 0), min(block.stop - first, count)
            if lo < hi:
                yield from itertools.islice(iter_shard(url), lo, hi)
            first += count

    def _rows_recordio(self, shard: int, num_shards: int) -> Iterator[dict]:
        dataset = RecordIODataset(self.url)
        try:
            for i in _block(len(dataset), shard, num_shards):
                yield dataset[i]
        finally:
            dataset.close()

    def _rows_imagefolder(self, shard: int, num_shards: int) -> Iterator[dict]:
        entries = index_imagefolder(self.url)
        for i in _block(len(entries), shard, num_shards):
            yield load_entry(entries[i])

    def _rows_orl(self, shard: int, num_shards: int) -> Iterator[dict]:
        rows = read_orl(self.url)
        for i in _block(len(rows), shard, num_shards):
            yield rows[i]

    def _rows_bin(self, shard: int, num_shards: int) -> Iterator[dict]:
        images, issame = load_bin(self.url)
        for i in _block(len(images), shard, num_shards):
            yield {"image": images[i], "label": -1, "sample": i, "pair": i // 2,
                   "issame": issame[i // 2]}


def _uri(toy: ToyFacesParams) -> str:
    return (f"toyfaces:?seed={toy.seed}&ids={toy.ids_text}&samples={toy.samples}"
            f"&size={toy.size}&difficulty={toy.difficulty!r}")


def _toyfaces_params(uri: str, rest: str) -> ToyFacesParams:
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
    values = {}
    for key, (kind, least) in TOYFACES_CHECKS.items():
        try:
            values[key] = kind(params[key])
            ok = values[key] >= least
        except ValueError:
            ok = False
        if not ok:
            raise SourceError(f"{uri!r}: {key}={params[key]!r} is not a {kind.__name__} ≥ {least}")
    try:
        ids = parse_id_spans(params["ids"])
    except SourceError as exc:
        raise SourceError(f"{uri!r}: {exc}") from None
    return ToyFacesParams(ids=ids, **values)


def parse_source(uri: str | Source) -> Source:
    """`Source.parse`, by its older name."""
    return Source.parse(uri)
