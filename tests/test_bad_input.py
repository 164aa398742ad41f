"""Bad input: every reader fails with an error that names the file (and the record where there is
one), and an unsafe pickle is refused before anything in it runs."""

from __future__ import annotations

import os
import pickle
import re

import numpy as np
import pytest

from cemiray.data import storage
from cemiray.data.imagefolder import read_imagefolder
from cemiray.data.images import ImageDecodeError, decode_image, encode_jpeg, encode_png
from cemiray.data.orl import OrlError, read_orl
from cemiray.data.parquet_shards import ShardError, read_shard, write_shard
from cemiray.data.recordio import RecordIODataset, RecordIOError, write_recordio
from cemiray.data.sources import SourceError, parse_source
from cemiray.data.verification_bin import (
    UnsafePickleError,
    VerificationBinError,
    load_bin,
    write_bin,
)


def png(seed: int = 0, size: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_png(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def rows(n: int = 6) -> list[dict]:
    return [{"image": png(i), "label": i // 2, "sample": i % 2} for i in range(n)]


# --- images ---------------------------------------------------------------------------------


def test_corrupt_and_truncated_images_name_their_source():
    with pytest.raises(ImageDecodeError, match="faces/7.png"):
        decode_image(b"definitely not an image", where="faces/7.png")
    data = png()
    with pytest.raises(ImageDecodeError, match="cut.png"):
        decode_image(data[: len(data) // 2], where="cut.png")
    with pytest.raises(ImageDecodeError, match="no-iend.png"):
        decode_image(data[:-12], where="no-iend.png")  # all pixel data present, file cut short
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0xFF
    with pytest.raises(ImageDecodeError, match="flipped.png"):
        decode_image(bytes(flipped), where="flipped.png")
    jpeg = encode_jpeg(np.full((32, 32, 3), 128, np.uint8))
    with pytest.raises(ImageDecodeError, match="cut.jpg"):
        decode_image(jpeg[: len(jpeg) - 40], where="cut.jpg")
    with pytest.raises(ImageDecodeError, match="row 3"):
        decode_image(None, where="row 3")


# --- RecordIO --------------------------------------------------------------------------------


def make_rec(tmp_path, header: bool) -> str:
    folder = str(tmp_path / "rec")
    write_recordio(folder, rows(), num_classes=3, image_size=16, header=header)
    return folder


@pytest.fixture
def rec_folder(tmp_path):
    return make_rec(tmp_path, header=False)


def _offsets(folder: str) -> list[int]:
    lines = storage.read_text(f"{folder}/train.idx").splitlines()
    return [int(line.split("\t")[1]) for line in lines]


def test_truncated_rec_names_file_and_record(rec_folder):
    rec = f"{rec_folder}/train.rec"
    data = storage.read_bytes(rec)
    storage.atomic_write_bytes(rec, data[:-7])
    dataset = RecordIODataset(rec_folder)
    with pytest.raises(RecordIOError, match=re.escape(rec) + r": record 5 at offset \d+ runs past"):
        dataset[5]
    with pytest.raises(RecordIOError, match="record 5"):
        dataset.labels()


def test_bad_magic_names_file_key_and_offset(tmp_path):
    rec_folder = make_rec(tmp_path, header=True)
    rec = f"{rec_folder}/train.rec"
    offset = _offsets(rec_folder)[2]
    data = bytearray(storage.read_bytes(rec))
    data[offset: offset + 4] = b"JUNK"
    storage.atomic_write_bytes(rec, bytes(data))
    dataset = RecordIODataset(rec_folder)
    with pytest.raises(RecordIOError, match=f"record 2 at offset {offset}: bad magic") as err:
        dataset[1]  # image records start at key 1 after the header record
    assert rec in str(err.value)
    assert dataset[0]["label"] == 0 and dataset[5]["sample"] == 1


def test_idx_pointing_past_eof_is_refused(rec_folder):
    idx = f"{rec_folder}/train.idx"
    size = os.path.getsize(f"{rec_folder}/train.rec")
    storage.atomic_write_text(idx, storage.read_text(idx) + f"6\t{size + 100}\n")
    with pytest.raises(RecordIOError, match=re.escape(idx) + f": line 7: key 6 points at offset "
                       f"{size + 100}, past the end"):
        RecordIODataset(rec_folder)


@pytest.mark.parametrize("bad", ["3 abc", "garbage", "4\t", "5\t12\t9", "x\t0"])
def test_malformed_or_truncated_idx_lines_are_refused(rec_folder, bad):
    idx = f"{rec_folder}/train.idx"
    lines = storage.read_text(idx).splitlines()
    lines[3] = bad
    storage.atomic_write_text(idx, "\n".join(lines))
    with pytest.raises(RecordIOError, match=re.escape(idx) + ": line 4: malformed index line"):
        RecordIODataset(rec_folder)


def test_idx_truncated_mid_file_misses_records_the_header_announces(tmp_path):
    folder = str(tmp_path / "rec")
    write_recordio(folder, rows(), num_classes=3, image_size=16, header=True)
    idx = f"{folder}/train.idx"
    text = storage.read_text(idx)
    storage.atomic_write_text(idx, text[: text.index("\n3\t")])
    with pytest.raises(RecordIOError, match=re.escape(idx) + r": header record 0 .* key 3 is not"):
        RecordIODataset(folder)


def test_recordio_writer_refuses_bad_rows(tmp_path):
    folder = str(tmp_path / "rec")
    bad_label = rows() + [{"image": png(9), "label": 3, "sample": 0}]
    with pytest.raises(RecordIOError, match="row 6: label 3 outside 0..2"):
        write_recordio(folder, bad_label, num_classes=3, image_size=16)
    wrong_size = rows() + [{"image": png(9, size=20), "label": 0, "sample": 5}]
    with pytest.raises(RecordIOError, match="row 6: image is 20×20, property says 16×16"):
        write_recordio(folder, wrong_size, num_classes=3, image_size=16)
    assert not storage.exists(folder)


# --- verification .bin -----------------------------------------------------------------------


class _RunsShell:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _RunsEval:
    def __reduce__(self):
        return eval, ("__import__('os').getpid()",)


def test_malicious_bin_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    url = str(tmp_path / "evil.bin")
    with open(url, "wb") as f:
        pickle.dump(([png(), _RunsShell(f"touch {marker}")], [True]), f, protocol=4)
    with pytest.raises(UnsafePickleError, match=re.escape(url) + r": refusing global \w+\.system"):
        load_bin(url)
    assert not marker.exists()
    pickle.loads(storage.read_bytes(url))  # the payload is real: unrestricted loading runs it
    assert marker.exists()

    with open(url, "wb") as f:
        pickle.dump(([png(), png(1)], [_RunsEval()]), f, protocol=4)
    with pytest.raises(UnsafePickleError, match="refusing global builtins.eval"):
        load_bin(url)


def test_bin_with_unequal_lists_or_wrong_types_is_refused(tmp_path):
    url = str(tmp_path / "uneven.bin")
    storage.atomic_write_bytes(url, pickle.dumps(([png(), png(1), png(2)], [True]), protocol=4))
    with pytest.raises(VerificationBinError, match=re.escape(url) + ": 3 images for 1 pairs"):
        load_bin(url)
    with pytest.raises(VerificationBinError, match="4 images for 1 pairs"):
        write_bin(str(tmp_path / "new.bin"), [png()] * 4, [True])
    assert not (tmp_path / "new.bin").exists()
    storage.atomic_write_bytes(url, pickle.dumps(([png(), png(1)], [1]), protocol=4))
    with pytest.raises(VerificationBinError, match=re.escape(url) + r": issame\[0\] is 1"):
        load_bin(url)
    storage.atomic_write_bytes(url, pickle.dumps(([png(), "text"], [True]), protocol=4))
    with pytest.raises(VerificationBinError, match="image 1 is str"):
        load_bin(url)
    storage.atomic_write_bytes(url, b"\x80\x04not a pickle at all")
    with pytest.raises(VerificationBinError, match=re.escape(url) + ": not a readable pickle"):
        load_bin(url)


# --- Parquet ---------------------------------------------------------------------------------


def test_truncated_and_corrupt_parquet_name_the_file(tmp_path):
    url = str(tmp_path / "shard.parquet")
    write_shard(url, rows())
    data = storage.read_bytes(url)
    storage.atomic_write_bytes(url, data[: len(data) // 2])
    with pytest.raises(ShardError, match=re.escape(url)):
        read_shard(url)
    storage.atomic_write_bytes(url, data[:8] + b"\0" * (len(data) - 16) + data[-8:])
    with pytest.raises(ShardError, match=re.escape(url)):
        read_shard(url)


def test_parquet_rows_of_the_wrong_shape_name_row_and_column(tmp_path):
    url = str(tmp_path / "bad.parquet")
    wrong_image = rows() + [{"image": "text", "label": 0, "sample": 9}]
    with pytest.raises(ShardError, match=re.escape(url) + ": row 6 field 'image' is str"):
        write_shard(url, wrong_image)
    extra = rows()
    extra[2] = {**extra[2], "pose": 3}
    with pytest.raises(ShardError, match="row 2 has fields unlike the first row"):
        write_shard(url, extra)
    mixed = [{**r, "pose": 1 if i < 4 else "left"} for i, r in enumerate(rows())]
    with pytest.raises(ShardError, match="column 'pose' mixes types"):
        write_shard(url, mixed)
    late = [{**r, "pose": 1} for r in rows()] + [{**rows()[0], "pose": "left"}]
    with pytest.raises(ShardError, match=r"column 'pose' in rows 4..6 does not fit type int"):
        write_shard(url, late, row_group_size=4)
    assert not storage.exists(url)


# --- missing paths ---------------------------------------------------------------------------


def test_missing_paths_are_named(tmp_path):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(storage.StorageError, match=re.escape(missing)):
        load_bin(f"{missing}/lfw.bin")
    with pytest.raises(storage.StorageError, match=re.escape(f"{missing}/train.rec")):
        RecordIODataset(missing)
    with pytest.raises(storage.StorageError, match=re.escape(f"{missing}/x.parquet")):
        read_shard(f"{missing}/x.parquet")
    with pytest.raises(storage.StorageError, match=re.escape(missing)):
        read_imagefolder(missing)
    with pytest.raises(OrlError, match=re.escape(missing) + ": ORL root not found"):
        read_orl(missing)
    with pytest.raises(storage.StorageError, match=re.escape("memory://nowhere/v.bin")):
        load_bin("memory://nowhere/v.bin")


def test_orl_tree_with_a_missing_image_names_it(tmp_path):
    (tmp_path / "s1").mkdir()
    for n in range(1, 10):
        (tmp_path / "s1" / f"{n}.pgm").write_bytes(b"P5 92 112 255\n" + bytes(92 * 112))
    with pytest.raises(OrlError, match=re.escape(str(tmp_path / "s1" / "10.pgm"))):
        read_orl(str(tmp_path), subjects=[1])


def test_imagefolder_with_stray_files_names_them(tmp_path):
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "0.png").write_bytes(png())
    (tmp_path / "0" / "labels.csv").write_text("a,b")
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "0" / "labels.csv"))):
        read_imagefolder(str(tmp_path))


@pytest.mark.parametrize(
    "uri, message",
    [
        ("lfw.bin", "expected '<kind>:<url>'"),
        ("hdf5:/data/x.h5", "expected '<kind>:<url>'"),
        ("toyfaces:?ids=0-9", r"missing \['samples'\]"),
        ("toyfaces:?ids=0-9&samples=3&colour=red", r"unknown \['colour'\]"),
        ("toyfaces:?ids=0-9&samples=3&samples=4", r"repeated \['samples'\]"),
        ("toyfaces:?ids=0-9&samples=three", "samples='three' is not a int"),
        ("toyfaces:?ids=9-x&samples=3", "ids='9-x'"),
        ("toyfaces:?ids=0-3,9-5&samples=3", "ids='0-3,9-5'"),
        ("toyfaces:?ids=0-9&samples=3&&", "malformed parameters"),
        ("toyfaces:/some/path", "takes no URL"),
        ("parquet:", "parquet needs a URL"),
    ],
)
def test_bad_source_uris(uri, message):
    with pytest.raises(SourceError, match=message) as err:
        parse_source(uri)
    assert repr(uri) in str(err.value) or uri.split(":")[0] in str(err.value)


def test_numpy_bools_with_other_numpy_payloads_are_refused(tmp_path):
    url = str(tmp_path / "array.bin")
    storage.atomic_write_bytes(url, pickle.dumps(([png(), png(1)], np.array([True])), protocol=4))
    with pytest.raises(UnsafePickleError, match=re.escape(url) + ": refusing global numpy"):
        load_bin(url)
    storage.atomic_write_bytes(url, pickle.dumps(([png(), png(1)], [np.float32(1)]), protocol=4))
    with pytest.raises(VerificationBinError, match=r"issame\[0\] is .*\(float32\), not a bool"):
        load_bin(url)
