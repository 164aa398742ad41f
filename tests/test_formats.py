"""Round trips of every face-data format on local disk and on memory://, plus files built by hand
from the documented byte layout, so that a reader and writer cannot agree on a wrong format."""

from __future__ import annotations

import io
import pickle
import struct
import uuid

import numpy as np
import pytest
from PIL import Image

from cemiray.data import storage
from cemiray.data.imagefolder import class_names, read_imagefolder, write_imagefolder
from cemiray.data.images import decode_image, encode_jpeg, encode_png, resize
from cemiray.data.orl import DEFAULT_ORL_ROOT, read_orl
from cemiray.data.parquet_shards import (
    iter_rows,
    list_shards,
    read_shard,
    read_shard_metadata,
    write_shard,
)
from cemiray.data.recordio import RecordIODataset, frame_record, unpack_record, write_recordio
from cemiray.data.sources import Source
from cemiray.data.verification_bin import decode_bin, load_bin, write_bin

MAGIC = 0xCED7230A


@pytest.fixture(params=["local", "memory"])
def base_url(request, tmp_path):
    if request.param == "local":
        yield str(tmp_path)
        return
    url = f"memory://formats-{uuid.uuid4().hex}"
    storage.makedirs(url)
    yield url
    storage.remove(url, recursive=True)


def make_pixels(n: int, size: int = 12, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def make_rows(num_labels: int = 4, samples: int = 3, size: int = 12) -> list[dict]:
    pixels = make_pixels(num_labels * samples, size)
    return [
        {"image": encode_png(pixels[label * samples + s]), "label": label, "sample": s}
        for label in range(num_labels)
        for s in range(samples)
    ]


def assert_same_faces(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert (g["label"], g["sample"]) == (w["label"], w["sample"])
        assert np.array_equal(decode_image(g["image"]), decode_image(w["image"]))


# --- images ---------------------------------------------------------------------------------


def test_png_is_lossless_and_grey_becomes_rgb():
    rgb = make_pixels(1, 17)[0]
    assert np.array_equal(decode_image(encode_png(rgb)), rgb)
    grey = rgb[:, :, 0]
    decoded = decode_image(encode_png(grey))
    assert decoded.shape == (17, 17, 3)
    assert all(np.array_equal(decoded[:, :, c], grey) for c in range(3))


def test_sixteen_bit_grey_is_scaled_not_clipped():
    deep = np.array([[0, 257, 65535, 32896]], dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(deep).save(buf, format="PNG")
    assert decode_image(buf.getvalue())[0, :, 0].tolist() == [0, 1, 255, 128]


def test_jpeg_is_close_and_resize_changes_shape():
    smooth = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (24, 1, 3))
    decoded = decode_image(encode_jpeg(smooth, quality=95))
    assert decoded.shape == (24, 32, 3)
    assert np.abs(decoded.astype(int) - smooth.astype(int)).mean() < 3
    assert resize(smooth, (12, 16)).shape == (12, 16, 3)
    assert resize(smooth, 8).shape == (8, 8, 3)


# --- Parquet shards --------------------------------------------------------------------------


def test_parquet_round_trip_with_metadata_columns(base_url):
    rows = make_rows()
    for i, row in enumerate(rows):
        row.update(identity=100 + row["label"], weight=0.5 * i, name=f"face-{i}",
                   nuisance={"pose": i, "light": [1, 2]}, flipped=i % 2 == 0,
                   note=None if i % 3 else "x")
    url = storage.join(base_url, "shards", "part-0.parquet")
    assert write_shard(url, rows, metadata={"world": {"seed": 3}, "source": "test"},
                       row_group_size=5) == len(rows)
    back = read_shard(url)
    assert_same_faces(back, rows)
    assert back == rows
    assert read_shard_metadata(url) == {"world": {"seed": 3}, "source": "test"}


def test_list_shards_ignores_temporary_and_other_files(base_url):
    folder = storage.join(base_url, "shards")
    rows = make_rows()
    write_shard(storage.join(folder, "b.parquet"), rows[6:])
    write_shard(storage.join(folder, "a.parquet"), rows[:6])
    storage.atomic_write_bytes(storage.join(folder, ".tmp-123-c.parquet"), b"half a file")
    storage.atomic_write_bytes(storage.join(folder, "notes.txt"), b"not a shard")
    assert [u.rsplit("/", 1)[1] for u in list_shards(folder)] == ["a.parquet", "b.parquet"]
    assert_same_faces(list(iter_rows(folder)), rows)
    assert_same_faces(list(iter_rows(storage.join(folder, "b.parquet"))), rows[6:])


def test_parquet_write_that_raises_midway_leaves_no_file(base_url):
    folder = storage.join(base_url, "out")
    storage.makedirs(folder)
    url = storage.join(folder, "shard.parquet")
    rows = make_rows(num_labels=10, samples=3)
    produced = []

    def rows_then_failure():
        for row in rows[:25]:
            produced.append(row)
            yield row
        raise RuntimeError("renderer crashed")

    with pytest.raises(RuntimeError, match="renderer crashed"):
        write_shard(url, rows_then_failure(), row_group_size=10)
    assert len(produced) == 25  # two row groups were written before the failure
    assert not storage.exists(url)
    assert storage.listdir(folder) == []


# --- RecordIO --------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [True, False])
def test_recordio_round_trip(base_url, header):
    rows = make_rows(num_labels=5, samples=3)
    folder = storage.join(base_url, "rec")
    shuffled = [rows[i] for i in np.random.default_rng(1).permutation(len(rows))]
    assert write_recordio(folder, shuffled, num_classes=6, image_size=12, header=header) == 15
    dataset = RecordIODataset(folder)
    assert len(dataset) == 15
    assert_same_faces([dataset[i] for i in range(len(dataset))], rows)
    assert dataset.labels().tolist() == [r["label"] for r in rows]
    assert dataset.num_classes() == 6
    assert dataset.image_size() == (12, 12)
    assert storage.read_text(storage.join(folder, "property")) == "6,12,12\n"
    if header:
        head, _ = unpack_record(dataset.read_record(0))
        assert head.flag == 2 and head.label.tolist() == [16.0, 22.0]
        identity_ranges = [unpack_record(dataset.read_record(16 + c))[0].label.tolist()
                           for c in range(6)]
        assert identity_ranges == [[1, 4], [4, 7], [7, 10], [10, 13], [13, 16], [16, 16]]
        assert dataset.keys == list(range(1, 16))
    else:
        assert dataset.keys == list(range(15))
    restored = pickle.loads(pickle.dumps(dataset))
    assert restored[3]["image"] == dataset[3]["image"]


def _chunk(flag: int, data: bytes) -> bytes:
    pad = b"\0" * (-len(data) % 4)
    return struct.pack("<II", MAGIC, (flag << 29) | len(data)) + data + pad


def test_recordio_built_by_hand_is_read(base_url):
    """Bytes laid out from the format's description, not by the writer under test."""
    folder = storage.join(base_url, "hand")
    images = [encode_png(p) for p in make_pixels(2, 8, seed=5)]
    odd_image = b"ABCD" + struct.pack("<I", MAGIC) + b"EFGHIJ"  # magic 4-aligned in the record
    records = {
        0: struct.pack("<IfQQ", 2, 0.0, 0, 0) + struct.pack("<2f", 4.0, 6.0),
        1: struct.pack("<IfQQ", 0, 0.0, 1, 0) + images[0],
        2: struct.pack("<IfQQ", 1, 0.0, 2, 0) + struct.pack("<f", 1.0) + images[1],
    }
    rec, idx = bytearray(), []
    for key, record in records.items():
        idx.append(f"{key}\t{len(rec)}\n")
        rec += _chunk(0, record)
    split = struct.pack("<IfQQ", 0, 1.0, 3, 0) + odd_image
    by_hand = _chunk(1, split[:28]) + _chunk(3, split[32:])
    assert frame_record(split) == by_hand
    idx.append(f"3\t{len(rec)}\n")
    rec += by_hand
    storage.atomic_write_bytes(storage.join(folder, "train.rec"), bytes(rec))
    storage.atomic_write_bytes(storage.join(folder, "train.idx"), "".join(idx).encode())

    dataset = RecordIODataset(storage.join(folder, "train.rec"))
    assert dataset.keys == [1, 2, 3]
    assert dataset.labels().tolist() == [0, 1, 1]
    assert dataset[0]["image"] == images[0]
    assert dataset[1]["image"] == images[1] and dataset[1]["label"] == 1
    assert dataset[2]["image"] == odd_image
    assert [dataset[i]["sample"] for i in range(3)] == [0, 0, 1]
    assert dataset.num_classes() == 2  # from the header's identity range 4..6


def test_recordio_without_header_built_by_hand(base_url):
    folder = storage.join(base_url, "plain")
    images = [encode_png(p) for p in make_pixels(3, 8, seed=6)]
    rec, idx = bytearray(), []
    for key, (label, image) in enumerate(zip([2.0, 0.0, 2.0], images, strict=True)):
        idx.append(f"{key}\t{len(rec)}")
        rec += _chunk(0, struct.pack("<IfQQ", 0, label, key, 0) + image)
    storage.atomic_write_bytes(storage.join(folder, "train.rec"), bytes(rec))
    storage.atomic_write_bytes(storage.join(folder, "train.idx"), "\n".join(idx).encode())
    dataset = RecordIODataset(folder)
    assert dataset.keys == [0, 1, 2]
    assert [dataset[i]["label"] for i in range(3)] == [2, 0, 2]
    assert [dataset[i]["sample"] for i in range(3)] == [0, 0, 1]
    assert [dataset[i]["image"] for i in range(3)] == images
    assert dataset.num_classes() == 3


# --- verification .bin -----------------------------------------------------------------------


def test_bin_round_trip_and_decode_resizes(base_url):
    pixels = make_pixels(6, 16)
    images = [encode_png(p) for p in pixels]
    url = storage.join(base_url, "sets", "toy.bin")
    write_bin(url, images, [True, False, True])
    got_images, issame = load_bin(url)
    assert got_images == images and issame == [True, False, True]
    assert pickle.loads(storage.read_bytes(url)) == (images, [True, False, True])
    decoded, flags = decode_bin(url, 16)
    assert decoded.shape == (6, 16, 16, 3) and np.array_equal(decoded[4], pixels[4])
    assert flags.dtype == bool and flags.tolist() == [True, False, True]
    small, _ = decode_bin(url, (8, 10))
    assert small.shape == (6, 8, 10, 3)


def test_bin_written_elsewhere_loads(tmp_path):
    """numpy bools, Python 3 protocol 2 bytes, and a Python 2 style pickle (str opcodes)."""
    images = [encode_png(p) for p in make_pixels(4, 8)]
    numpy_bools = tmp_path / "numpy.bin"
    numpy_bools.write_bytes(pickle.dumps((images, [np.bool_(True), np.bool_(False)]), protocol=4))
    assert load_bin(str(numpy_bools)) == (images, [True, False])
    protocol2 = tmp_path / "p2.bin"
    protocol2.write_bytes(pickle.dumps((tuple(images), (True, False)), protocol=2))
    assert load_bin(str(protocol2)) == (images, [True, False])

    py2 = bytearray(b"\x80\x02](")  # PROTO 2, EMPTY_LIST, MARK
    for image in images[:2]:
        py2 += b"T" + struct.pack("<I", len(image)) + image  # BINSTRING: a Python 2 str
    py2 += b"e](\x88e\x86."  # APPENDS, EMPTY_LIST, MARK, NEWTRUE, APPENDS, TUPLE2, STOP
    (tmp_path / "py2.bin").write_bytes(bytes(py2))
    assert load_bin(str(tmp_path / "py2.bin")) == (images[:2], [True])


# --- ImageFolder -----------------------------------------------------------------------------


def test_imagefolder_round_trip(base_url):
    rows = make_rows(num_labels=12, samples=2)
    rows[5]["image"] = encode_jpeg(decode_image(rows[5]["image"]))
    root = storage.join(base_url, "faces")
    assert write_imagefolder(root, rows) == 24
    names = class_names(root)
    assert names == [f"{i:02d}" for i in range(12)]
    back = read_imagefolder(root)
    assert [(r["label"], r["sample"]) for r in back] == [(r["label"], r["sample"]) for r in rows]
    assert back[5]["image"] == rows[5]["image"] and back[5]["filename"] == "1.jpg"
    assert back[7]["class_name"] == "03"
    lossless = [i for i in range(24) if i != 5]
    assert_same_faces([back[i] for i in lossless], [rows[i] for i in lossless])


# --- ORL -------------------------------------------------------------------------------------


def test_orl_is_read_in_full(orl_root):
    assert str(orl_root) == DEFAULT_ORL_ROOT
    rows = read_orl(DEFAULT_ORL_ROOT)
    assert len(rows) == 400
    assert sorted({r["label"] for r in rows}) == list(range(40))
    assert [r["sample"] for r in rows[:10]] == list(range(10))
    assert rows[-1]["subject"] == 40 and rows[-1]["label"] == 39
    first = decode_image(rows[0]["image"])
    assert first.shape == (112, 92, 3)
    assert np.array_equal(first[:, :, 0], first[:, :, 2])  # grey source
    assert rows[0]["image"].startswith(b"\x89PNG")
    assert len(read_orl(orl_root, subjects=[3])) == 10


# --- sources ---------------------------------------------------------------------------------


def _shards(source, k):
    return [list(source.iter_rows(shard=s, num_shards=k)) for s in range(k)]


def test_sources_read_every_format_and_partition(base_url, tmp_path):
    rows = make_rows(num_labels=4, samples=3)
    write_shard(storage.join(base_url, "pq", "a.parquet"), rows[:5])
    write_shard(storage.join(base_url, "pq", "b.parquet"), rows[5:])
    write_recordio(storage.join(base_url, "rec"), rows, num_classes=4, image_size=12)
    write_imagefolder(storage.join(base_url, "folder"), rows)
    for kind, path in [("parquet", "pq"), ("recordio", "rec"), ("imagefolder", "folder")]:
        source = Source.parse(f"{kind}:{storage.join(base_url, path)}")
        assert (source.kind, source.num_rows(), source.num_classes()) == (kind, 12, 4)
        assert_same_faces(list(source.iter_rows()), rows)
        parts = _shards(source, 5)
        assert [len(p) for p in parts] == [2, 2, 3, 2, 3]
        assert_same_faces([r for p in parts for r in p], rows)

    write_bin(storage.join(base_url, "v.bin"), [r["image"] for r in rows], [True] * 6)
    pairs = Source.parse(f"bin:{storage.join(base_url, 'v.bin')}")
    assert pairs.num_rows() == 12 and pairs.num_classes() == 0
    second = list(pairs.iter_rows(1, 2))
    assert [r["pair"] for r in second] == [3, 3, 4, 4, 5, 5] and second[0]["issame"] is True


def test_orl_source_uses_the_default_root(orl_root):
    source = Source.parse("orl:")
    assert source.url == DEFAULT_ORL_ROOT
    assert (source.num_rows(), source.num_classes()) == (400, 40)
    part = list(source.iter_rows(shard=3, num_shards=4))
    assert [r["label"] for r in part[:1]] == [30] and len(part) == 100


def test_toyfaces_source_parses_and_renders():
    source = Source.parse("toyfaces:?seed=0&ids=5-7,20&samples=3&size=32&difficulty=1.0")
    assert source.toy.identities == [5, 6, 7, 20] and source.toy.ids_text == "5-7,20"
    assert source.num_rows() == 12
    assert source.num_classes() == 4
    rows = list(source.iter_rows())
    assert [(r["label"], r["sample"], r["identity"]) for r in rows[-4:]] == [
        (2, 2, 7), (3, 0, 20), (3, 1, 20), (3, 2, 20)
    ]
    assert decode_image(rows[0]["image"]).shape == (32, 32, 3)
    assert {"group", "age", "sex", "nuisance"} <= set(rows[0])
    halves = _shards(source, 2)
    assert [r["image"] for p in halves for r in p] == [r["image"] for r in rows]
    again = list(Source.parse(source.uri).iter_rows(shard=1, num_shards=2))
    assert [r["image"] for r in again] == [r["image"] for r in halves[1]]
