"""ToyFaces → Parquet / RecordIO / ImageFolder / .bin → read back: identical pixels and labels."""

import numpy as np
import pytest

from cemiray.data.imagefolder import read_imagefolder, write_imagefolder
from cemiray.data.images import decode_image
from cemiray.data.parquet_shards import read_shard, write_shard
from cemiray.data.recordio import RecordIODataset, write_recordio
from cemiray.data.sources import parse_source
from cemiray.data.toyfaces import ToyFacesWorld
from cemiray.data.verification_bin import decode_bin, write_bin


@pytest.fixture(scope="module")
def toy_rows():
    return list(parse_source("toyfaces:?seed=3&ids=0-5&samples=3&size=24").iter_rows())


def _pixels(rows):
    return [(decode_image(r["image"]), int(r["label"])) for r in rows]


def _same(a, b):
    assert len(a) == len(b)
    for (img_a, lab_a), (img_b, lab_b) in zip(sorted(a, key=lambda p: (p[1], p[0].tobytes())),
                                              sorted(b, key=lambda p: (p[1], p[0].tobytes()))):
        assert lab_a == lab_b and np.array_equal(img_a, img_b)


@pytest.mark.parametrize("base", ["file", "memory"])
def test_toyfaces_round_trips(toy_rows, tmp_path, base):
    root = str(tmp_path) if base == "file" else f"memory://rt-{tmp_path.name}"
    expected = _pixels(toy_rows)
    # the rendered pixels are the world's own pixels
    world = ToyFacesWorld(seed=3, size=24)
    first, _ = world.render(toy_rows[4]["identity"], toy_rows[4]["sample"])
    assert np.array_equal(expected[4][0], first)

    write_shard(f"{root}/shard.parquet", toy_rows)
    _same(_pixels(read_shard(f"{root}/shard.parquet")), expected)

    write_recordio(f"{root}/rec", toy_rows, num_classes=6, image_size=24)
    rec = RecordIODataset(f"{root}/rec")
    _same(_pixels([rec[i] for i in range(len(rec))]), expected)

    write_imagefolder(f"{root}/folder", toy_rows)
    _same(_pixels(read_imagefolder(f"{root}/folder")), expected)

    images = [r["image"] for r in toy_rows[:12]]
    issame = [toy_rows[2 * i]["label"] == toy_rows[2 * i + 1]["label"] for i in range(6)]
    write_bin(f"{root}/v.bin", images, issame)
    decoded, flags = decode_bin(f"{root}/v.bin", 24)
    assert list(flags) == issame
    for arr, (img, _) in zip(decoded, expected[:12]):
        assert np.array_equal(arr, img)
