"""The workers' side of `cemiray generate`: the null generator, part files and the shard join.

No Ray here: the encode-and-write stage and the join are plain functions, driven directly; the
Ray run with the null generator is in test_generate_null.py."""

from __future__ import annotations

import numpy as np
import pytest

from cemiray.data.parquet_shards import iter_shard, read_shard_metadata
from cemiray.pipeline.generate.null_sampler import NullImages, NullSampler, null_size
from cemiray.pipeline.generate.shard_plan import plan_shards, work_items
from cemiray.pipeline.generate.writer import (
    RowContext,
    compact_shard,
    encode_and_write,
    part_keys,
    parts_folder,
)
from cemiray.pipeline.seeds.table import SeedTable, random_identities

N, K = 6, 3


def _table() -> SeedTable:
    return SeedTable(seed_ids=np.arange(N) * 10, embeddings=random_identities(N, 8, seed=0),
                     sources=["random"] * N,
                     attributes={"group": ["a", None, "b", "a", "b", None],
                                 "age": [20, 30, None, 40, 50, 60]},
                     sha256="0" * 64, url="memory")


def _context(out: str, shards: list) -> RowContext:
    from cemiray.data.parquet_shards import column_kind

    table = _table()
    return RowContext(out_url=out, shards={s.index: s for s in shards}, samples_per_identity=K,
                      plan_sha="p" * 64,
                      seed_ids=table.seed_ids, sources=table.sources,
                      attributes=table.attributes,
                      kinds={k: column_kind("t", k, v) for k, v in table.attributes.items()},
                      hashes={"generator": "g" * 64, "recognizer": None},
                      sampling={"scheduler": "null", "steps": 0})


META = {"shard": "shard-00000003-00000006.parquet", "first": 3, "last": 6,
        "plan_sha256": "p" * 64}


def _joined(batches: list[dict]) -> dict:
    return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


def _batches(shard, images_per_call: int = 4) -> list[dict]:
    from cemiray.pipeline.generate.schedules import ConstantSchedule

    sampler = NullSampler("null:24", images_per_call=images_per_call)
    items = work_items(shard, _table(), K, ConstantSchedule(m=0.5), 0, 1)
    return [b for item in items for b in sampler.generate_chunk(item)]


def test_null_images_are_a_function_of_the_seed_and_the_size():
    images = NullImages(24)
    a = images(np.array([1, 2, 2**40 + 3]))
    assert a.shape == (3, 24, 24, 3) and a.dtype == np.uint8
    assert np.array_equal(a[1], images(np.array([2]))[0])
    assert not np.array_equal(a[0], a[1]) and not np.array_equal(a[0], a[2])
    assert np.array_equal(NullImages(24)(np.array([7])), images(np.array([7])))
    for bad in ("null:", "null:4", "null:abc", "null:2000"):
        with pytest.raises(ValueError, match="null:<size>"):
            null_size(bad)


def test_parts_join_into_a_shard_whatever_the_cut_and_the_repeats(tmp_path):
    shard = plan_shards(N, 3)[1]  # identities 3, 4, 5
    out = str(tmp_path)
    context = _context(out, [shard])
    batches = _batches(shard)
    records = [encode_and_write(b, context) for b in batches]
    assert sum(int(r["rows"].sum()) for r in records) == 3 * K
    for r in records:  # each record's wall-clock interval, for the driver's steady rate
        assert (r["finished_s"] >= r["started_s"]).all() and (r["started_s"] > 1e9).all()
    keys = part_keys(parts_folder(out, shard.name))
    assert len(keys) == len(batches) and sum(len(k) for k in keys.values()) == 3 * K
    # retried chunks whose images arrive cut differently: the first two batches as one
    encode_and_write(_joined(batches[:2]), context)
    shard_url = str(tmp_path / shard.name)
    done = compact_shard(parts_folder(out, shard.name), shard_url, shard.first, shard.last, K,
                         META)
    assert done["rows"] == 3 * K and done["duplicates"] == 2 * K
    assert not (tmp_path / "parts" / shard.name.removesuffix(".parquet")).exists()
    rows = list(iter_shard(shard_url))
    assert [(r["label"], r["sample"]) for r in rows] == [(i, s) for i in (3, 4, 5)
                                                          for s in range(K)]
    assert [r["group"] for r in rows[::K]] == ["a", "b", None]
    assert [r["age"] for r in rows[::K]] == [40, 50, 60]
    assert {r["seed_id"] for r in rows} == {30, 40, 50}
    assert read_shard_metadata(shard_url) == META
    first_bytes = (tmp_path / shard.name).read_bytes()

    # the same shard from parts cut another way gives the same bytes
    other = tmp_path / "other"
    other_context = _context(str(other), [shard])
    encode_and_write(_joined(batches[1:]), other_context)
    encode_and_write(batches[0], other_context)
    compact_shard(parts_folder(str(other), shard.name), str(other / shard.name), 3, 6, K, META)
    assert (other / shard.name).read_bytes() == first_bytes
    # a chunk that is the whole shard is written as the shard by its task: the same bytes
    direct = tmp_path / "direct"
    record = encode_and_write(_joined(batches[::-1]), _context(str(direct), [shard]))
    assert record["final"].tolist() == [True] and record["part"].tolist() == [shard.name]
    assert (direct / "parquet" / shard.name).read_bytes() == first_bytes
    assert not (direct / "parts").exists()
    # a retried join whose first try wrote the shard: the shard is kept, the hash reported
    again = compact_shard(parts_folder(out, shard.name), shard_url, 3, 6, K, {})
    assert again["sha256"] == done["sha256"] and (tmp_path / shard.name).read_bytes() == (
        first_bytes)


def test_a_shard_is_not_joined_from_parts_that_miss_images(tmp_path):
    shard = plan_shards(N, 3)[0]
    out = str(tmp_path)
    context = _context(out, [shard])
    for batch in _batches(shard)[:-1]:
        encode_and_write(batch, context)
    (tmp_path / "parts" / shard.name.removesuffix(".parquet") / ".tmp-x-part.parquet").write_bytes(
        b"half a file")  # a killed writer's temporary is not a part
    with pytest.raises(RuntimeError, match=r"hold 6 of the 9 images"):
        compact_shard(parts_folder(out, shard.name), str(tmp_path / shard.name), 0, 3, K, {})
    assert not (tmp_path / shard.name).exists()
    assert len(part_keys(parts_folder(out, shard.name))) == 2
