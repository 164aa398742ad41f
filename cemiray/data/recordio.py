"""insightface RecordIO (data): `train.rec`/`train.idx`/`property` read and written without MXNet.

insightface training sets in MXNet RecordIO (`train.rec`, `train.idx`, `property`), read and
written without MXNet.

Layout (dmlc-core RecordIO + MXNet image records), all little-endian:
- `.rec`: records back to back. A record is one or more chunks: uint32 magic 0xced7230a, uint32
  word (lower 29 bits: chunk length; upper 3 bits: 0 whole record, 1 first, 2 middle, 3 last
  chunk), the chunk bytes, zero padding to a multiple of 4. A record is split where its bytes
  hold the magic at a 4-aligned position; that magic is dropped and restored on reading.
- record bytes: IRHeader `<IfQQ` (flag, label, id, id2), then `flag` float32 labels when
  flag > 0 (then the header label field is 0), then the encoded image.
- `.idx`: text lines `key<TAB>byte offset of the record in .rec`.
- `property`: `num_classes,H,W`.
- insightface header record: key 0 with flag > 0 and labels (a, b): image records are keys
  1..a-1; keys a..b-1 are identity records whose labels (start, end) give each identity's image
  keys. Without it (key 0 an ordinary image, flag 0) every key is an image record.

Rows read back carry `sample` = position of the record among the records of its label, in key
order (RecordIO stores no sample index); the writer therefore sorts rows by (label, sample).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cemiray.data import images, storage

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
LENGTH_BITS = 29
MAX_CHUNK = (1 << LENGTH_BITS) - 1
IRHEADER = struct.Struct("<IfQQ")

WHOLE, FIRST, MIDDLE, LAST = 0, 1, 2, 3


class RecordIOError(ValueError):
    """A malformed .rec/.idx/property; the message names the file and the record key/offset."""


@dataclass(frozen=True)
class IRHeader:
    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def _pad4(n: int) -> int:
    return (n + 3) & ~3


def pack_record(label: float | Iterable[float], record_id: int, payload: bytes,
                id2: int = 0) -> bytes:
    """IRHeader + payload; a sequence label is stored as `flag` float32 values (MXNet's pack)."""
    if isinstance(label, (int, float, np.integer, np.floating)):
        return IRHEADER.pack(0, float(label), record_id, id2) + payload
    values = np.asarray(list(label), dtype="<f4")
    return IRHEADER.pack(values.size, 0.0, record_id, id2) + values.tobytes() + payload


def unpack_record(data: bytes, where: str = "") -> tuple[IRHeader, bytes]:
    if len(data) < IRHEADER.size:
        raise RecordIOError(f"{where}: record of {len(data)} bytes is shorter than the "
                            f"{IRHEADER.size}-byte IRHeader")
    flag, label, record_id, id2 = IRHEADER.unpack_from(data)
    body = data[IRHEADER.size:]
    if flag > 0:
        if len(body) < 4 * flag:
            raise RecordIOError(f"{where}: IRHeader flag {flag} announces {flag} float labels "
                                f"but only {len(body)} bytes follow")
        label = np.frombuffer(body, dtype="<f4", count=flag).copy()
        body = body[4 * flag:]
    return IRHeader(flag, label, record_id, id2), body


def frame_record(data: bytes) -> bytes:
    """dmlc RecordIO framing of one record, split wherever the magic sits 4-aligned in it."""
    if len(data) > MAX_CHUNK:
        raise RecordIOError(f"record of {len(data)} bytes exceeds RecordIO's {MAX_CHUNK}")
    aligned = len(data) & ~3
    words = np.frombuffer(data[:aligned], dtype="<u4")
    cuts = (np.flatnonzero(words == MAGIC) * 4).tolist()
    out = bytearray()
    start = 0
    for position in cuts:
        flag = FIRST if start == 0 else MIDDLE
        out += MAGIC_BYTES + struct.pack("<I", (flag << LENGTH_BITS) | (position - start))
        out += data[start:position]
        start = position + 4
    flag = WHOLE if not cuts else LAST
    tail = data[start:]
    out += MAGIC_BYTES + struct.pack("<I", (flag << LENGTH_BITS) | len(tail))
    out += tail + b"\0" * (_pad4(len(tail)) - len(tail))
    return bytes(out)


def label_to_int(label: float | np.ndarray, where: str) -> int:
    """arcface_torch's rule: an array label means its first value."""
    value = float(label[0]) if isinstance(label, np.ndarray) else float(label)
    if not math.isfinite(value) or value < 0 or value != int(value):
        raise RecordIOError(f"{where}: label {value} is not a non-negative integer")
    return int(value)


def _parse_idx(idx_url: str, text: str, rec_url: str, rec_size: int) -> dict[int, int]:
    offsets: dict[int, int] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.strip().split("\t")
        try:
            if len(fields) != 2:
                raise ValueError
            key, offset = int(fields[0]), int(fields[1])
        except ValueError:
            raise RecordIOError(f"{idx_url}: line {lineno}: malformed index line {line!r} "
                                "(expected 'key<TAB>offset')") from None
        if offset < 0 or offset + 8 > rec_size:
            raise RecordIOError(f"{idx_url}: line {lineno}: key {key} points at offset {offset}, "
                                f"past the end of {rec_url} ({rec_size} bytes)")
        if key in offsets:
            raise RecordIOError(f"{idx_url}: line {lineno}: key {key} appears twice")
        offsets[key] = offset
    return offsets


def _parse_property(url: str) -> tuple[int, int, int]:
    text = storage.read_text(url).strip()
    try:
        num_classes, height, width = (int(v) for v in text.split(","))
    except ValueError:
        raise RecordIOError(f"{url}: expected 'num_classes,H,W', got {text!r}") from None
    return num_classes, height, width


class RecordIODataset:
    """Random access to the image records of an insightface RecordIO pair, as face rows.

    `url` is a folder holding train.rec/train.idx(/property), or a .rec file whose .idx sits
    beside it (or is given). Picklable: the open file is not part of the state."""

    def __init__(self, url: str, idx_url: str | None = None):
        url = str(url).rstrip("/")
        if url.endswith(".rec"):
            self.rec_url = url
            self.idx_url = idx_url or url[: -len(".rec")] + ".idx"
            property_url = url.rsplit("/", 1)[0] + "/property" if "/" in url else "property"
        else:
            self.rec_url = storage.join(url, "train.rec")
            self.idx_url = idx_url or storage.join(url, "train.idx")
            property_url = storage.join(url, "property")
        for needed in (self.rec_url, self.idx_url):
            if not storage.exists(needed):
                raise storage.StorageError(f"{needed}: no such file (RecordIO needs .rec + .idx)")
        self.property = _parse_property(property_url) if storage.exists(property_url) else None
        fs, path = storage.filesystem(self.rec_url)
        self.rec_size = fs.size(path)
        self.offsets = _parse_idx(self.idx_url, storage.read_text(self.idx_url), self.rec_url,
                                  self.rec_size)
        self._file: Any = None
        self._labels: np.ndarray | None = None
        self._samples: np.ndarray | None = None
        self._ranges: list[tuple[int, int]] | None = None
        self._ranges_read = False
        self.header: IRHeader | None = None
        self.keys = self._image_keys()

    def _image_keys(self) -> list[int]:
        if 0 not in self.offsets:
            return list(self.offsets)
        header = self._header_of(0)
        if header.flag == 0:
            return list(self.offsets)
        self.header = header
        end = label_to_int(header.label, f"{self.rec_url} header record 0")
        missing = [k for k in range(1, end) if k not in self.offsets]
        if missing:
            raise RecordIOError(f"{self.idx_url}: header record 0 of {self.rec_url} says image "
                                f"records are keys 1..{end - 1}, but key {missing[0]} is not "
                                f"indexed ({len(missing)} missing)")
        return list(range(1, end))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None}

    def _open(self):
        if self._file is None:
            fs, path = storage.filesystem(self.rec_url)
            self._file = fs.open(path, "rb")
        return self._file

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def read_record(self, key: int, limit: int | None = None) -> bytes:
        """The unframed bytes of record `key` (only the first `limit` bytes, when given)."""
        if key not in self.offsets:
            raise RecordIOError(f"{self.idx_url}: no record with key {key}")
        offset = self.offsets[key]
        where = f"{self.rec_url}: record {key} at offset {offset}"
        f = self._open()
        f.seek(offset)
        out = bytearray()
        position, first = offset, True
        while True:
            head = f.read(8)
            if len(head) < 8:
                raise RecordIOError(f"{where} runs past the end of the file "
                                    f"({self.rec_size} bytes) at offset {position}")
            magic, word = struct.unpack("<II", head)
            if magic != MAGIC:
                raise RecordIOError(f"{where}: bad magic 0x{magic:08x} at offset {position} "
                                    f"(expected 0x{MAGIC:08x})")
            flag, length = word >> LENGTH_BITS, word & MAX_CHUNK
            if flag not in ((WHOLE, FIRST) if first else (MIDDLE, LAST)):
                raise RecordIOError(f"{where}: chunk at offset {position} has continuation "
                                    f"flag {flag}, impossible in this position")
            need = _pad4(length)
            if position + 8 + need > self.rec_size:
                raise RecordIOError(f"{where} runs past the end of the file: chunk of {length} "
                                    f"bytes at offset {position}, file has {self.rec_size}")
            if limit is not None and len(out) + length >= limit:
                out += f.read(limit - len(out))
                return bytes(out)
            chunk = f.read(need)
            if len(chunk) < need:
                raise RecordIOError(f"{where} runs past the end of the file at offset {position}")
            out += chunk[:length]
            position += 8 + need
            if flag in (WHOLE, LAST):
                return bytes(out)
            out += MAGIC_BYTES
            if limit is not None and len(out) >= limit:
                return bytes(out[:limit])
            first = False

    def _header_of(self, key: int) -> IRHeader:
        """The IRHeader of a record, reading only its first bytes."""
        data = self.read_record(key, limit=IRHEADER.size)
        flag = struct.unpack_from("<I", data)[0] if len(data) >= 4 else 0
        if flag > 0:
            data = self.read_record(key, limit=IRHEADER.size + 4 * flag)
        return unpack_record(data, f"{self.rec_url} record {key}")[0]

    def __len__(self) -> int:
        return len(self.keys)

    def labels(self) -> np.ndarray:
        """int64 label of every image record, in order (reads each record's header once)."""
        if self._labels is None:
            self._labels = np.array(
                [label_to_int(self._header_of(k).label, f"{self.rec_url} record {k}")
                 for k in self.keys], dtype=np.int64)
        return self._labels

    def samples(self) -> np.ndarray:
        """Position of each image record among the records of its label."""
        if self._samples is None:
            counts: dict[int, int] = {}
            samples = np.empty(len(self.keys), dtype=np.int64)
            for i, label in enumerate(self.labels().tolist()):
                samples[i] = counts.get(label, 0)
                counts[label] = samples[i] + 1
            self._samples = samples
        return self._samples

    def identity_ranges(self) -> list[tuple[int, int]] | None:
        """Image keys [start, end) of each label, from the identity records that header record 0
        announces; None for files without them."""
        if not self._ranges_read:
            self._ranges_read = True
            if self.header is not None and self.header.flag >= 2:
                first, end = (int(v) for v in self.header.label[:2])
                if end > first and all(k in self.offsets for k in range(first, end)):
                    self._ranges = [self._identity_range(k) for k in range(first, end)]
        return self._ranges

    def _identity_range(self, key: int) -> tuple[int, int]:
        head = self._header_of(key)
        if head.flag < 2:
            raise RecordIOError(f"{self.rec_url}: record {key} should be an identity record "
                                f"(header record 0 says so) but has flag {head.flag}")
        return int(head.label[0]), int(head.label[1])

    def _sample(self, index: int, key: int, label: int) -> int:
        """Cheap with identity records (key − the identity's first key); else a label scan."""
        ranges = self.identity_ranges()
        if ranges is None:
            return int(self.samples()[index])
        if label >= len(ranges) or not ranges[label][0] <= key < ranges[label][1]:
            span = ranges[label] if label < len(ranges) else "no range"
            raise RecordIOError(f"{self.rec_url}: record {key} has label {label}, outside that "
                                f"identity's image keys {span} from its identity record")
        return key - ranges[label][0]

    def __getitem__(self, index: int) -> dict:
        if not -len(self.keys) <= index < len(self.keys):
            raise IndexError(f"{self.rec_url}: image index {index} out of range({len(self.keys)})")
        index %= len(self.keys)
        key = self.keys[index]
        where = f"{self.rec_url} record {key}"
        header, image = unpack_record(self.read_record(key), where)
        label = label_to_int(header.label, where)
        return {"image": image, "label": label, "sample": self._sample(index, key, label),
                "key": key}

    def num_classes(self) -> int:
        if self.property is not None:
            return self.property[0]
        if self.header is not None and self.header.flag >= 2:
            first, end = (int(v) for v in self.header.label[:2])
            if end > first:
                return end - first
        return int(self.labels().max()) + 1 if len(self) else 0

    def image_size(self) -> tuple[int, int] | None:
        return None if self.property is None else self.property[1:]


def write_recordio(
    folder_url: str,
    rows: Iterable[dict],
    num_classes: int,
    image_size: int | tuple[int, int],
    header: bool = True,
    prefix: str = "train",
) -> int:
    """Write rows as `<prefix>.rec`, `<prefix>.idx` and `property`; returns the image count.

    Rows are sorted by (label, sample). With `header`, record 0 is insightface's header record and
    one identity record per class follows the images. Each file is written atomically."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    rec_url = storage.join(folder_url, f"{prefix}.rec")
    idx_url = storage.join(folder_url, f"{prefix}.idx")
    rows = list(rows)
    for i, row in enumerate(rows):
        _check_row(rec_url, i, row, num_classes, (height, width))
    ordered = sorted(rows, key=lambda r: (int(r["label"]), int(r["sample"])))
    first_key = 1 if header else 0
    end = first_key + len(ordered)
    counts = np.bincount(np.asarray([r["label"] for r in ordered], dtype=np.int64),
                         minlength=num_classes)
    bounds = (first_key + np.concatenate([[0], np.cumsum(counts)])).tolist()

    def records() -> Iterable[tuple[int, bytes]]:
        if header:
            yield 0, pack_record([end, end + num_classes], 0, b"")
        for i, row in enumerate(ordered):
            yield first_key + i, pack_record(int(row["label"]), first_key + i, bytes(row["image"]))
        if header:
            for label in range(num_classes):
                key = end + label
                yield key, pack_record([bounds[label], bounds[label + 1]], key, b"")

    offset = 0
    with storage.atomic_open(rec_url, "wb") as frec, storage.atomic_open(idx_url, "wb") as fidx:
        for key, record in records():
            framed = frame_record(record)
            frec.write(framed)
            fidx.write(f"{key}\t{offset}\n".encode("ascii"))
            offset += len(framed)
    storage.atomic_write_text(storage.join(folder_url, "property"),
                              f"{num_classes},{height},{width}\n")
    return len(ordered)


def _check_row(rec_url: str, index: int, row: dict, num_classes: int,
               size: tuple[int, int]) -> None:
    where = f"{rec_url}: row {index}"
    missing = [f for f in ("image", "label", "sample") if f not in row]
    if missing:
        raise RecordIOError(f"{where} has no {missing} field")
    label, image = row["label"], row["image"]
    if isinstance(label, bool) or not isinstance(label, (int, np.integer)):
        raise RecordIOError(f"{where}: label {label!r} is not an int")
    if not 0 <= label < num_classes:
        raise RecordIOError(f"{where}: label {label} outside 0..{num_classes - 1}")
    if not isinstance(image, (bytes, bytearray, memoryview)):
        raise RecordIOError(f"{where}: image is {type(image).__name__}, expected bytes")
    try:
        actual = images.image_size(image, where)
    except images.ImageDecodeError as exc:
        raise RecordIOError(str(exc)) from exc
    if actual != size:
        raise RecordIOError(f"{where}: image is {actual[0]}×{actual[1]}, property says "
                            f"{size[0]}×{size[1]}")
