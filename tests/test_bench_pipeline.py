"""`cemiray bench-pipeline` at toy sizes on the session's Ray cluster: the null generator through
the whole `generate` job (driver in its own process), the bare loop, the machine's parallel
ceiling, and the JSON the README's table is copied from."""

from __future__ import annotations

import json

import pytest

from cemiray.bench.pipeline import BenchPipelineConfig, run
from cemiray.data.parquet_shards import iter_rows


@pytest.mark.ray
@pytest.mark.slow  # 26 s; its parts (null sampler, writer, steady rate) have their own tests
def test_bench_pipeline_measures_both_loops_and_keeps_its_outputs(ray_cluster, tmp_path):
    cfg = BenchPipelineConfig(out=str(tmp_path), image_size=16, sizes=[240, 120],
                              samples_per_identity=10, identities_per_shard=4, images_per_call=40,
                              block_mb=4, object_store_budget_mb=64, ceiling_images=100,
                              keep_outputs=True)
    result = run(cfg)
    figures = json.loads((tmp_path / "bench_pipeline.json").read_text())["figures"]
    assert set(figures["sizes"]) == {"120", "240"}
    for size, f in figures["sizes"].items():
        assert f["images"] == int(size) and f["duplicates_dropped"] == 0
        assert f["pipeline_img_per_s"] > 0 and f["bare_img_per_s"] > 0
        assert f["ratio_per_core"] == pytest.approx(
            f["pipeline_img_per_s"] / f["cluster_cpus"] / f["bare_img_per_s"], abs=1e-3)
        assert f["peak_rss_driver_mb"] > 50 and f["cpu_s_per_image"]["encode"] > 0
        assert f["cpu_s_per_image"]["compact"] == 0  # one chunk per shard: no joins
        rows = list(iter_rows(str(tmp_path / f"n{size}" / "dataset" / "parquet")))
        assert sorted((r["label"], r["sample"]) for r in rows) == [
            (label, s) for label in range(int(size) // 10) for s in range(10)]
        assert {r["scheduler"] for r in rows} == {"null"}
        assert all(r["similarity"] == r["target_m"] for r in rows)
    ceiling = figures["machine_parallel_ceiling"]
    assert ceiling["processes"] == figures["sizes"]["120"]["cluster_cpus"]
    assert ceiling["ceiling_per_core"] > 0
    assert [row["node_img_per_s"] for row in figures["cores_to_feed_8_gpus"]] == [2000, 20000]
    assert set(figures["meets"]) == {"ratio_per_core", "driver_rss_flat", "object_store_flat"}
    assert result["results"].endswith("bench_pipeline.json")


def test_null_generator_refuses_what_it_cannot_do(tmp_path):
    from cemiray.pipeline.generate.job import GenerateConfig, prepare_inputs
    from cemiray.pipeline.seeds.table import random_identities, write_seed_table

    seeds = str(tmp_path / "seeds.parquet")
    write_seed_table(seeds, [1, 2], random_identities(2, 8, seed=0))
    base = {"out": str(tmp_path / "o"), "seeds": seeds}
    inputs = prepare_inputs(GenerateConfig(**base, generator="null:32"))
    assert inputs.image_size == 32 and inputs.hashes["recognizer"] is None
    with pytest.raises(ValueError, match="takes no judge"):
        prepare_inputs(GenerateConfig(**base, generator="null:32", judge=str(tmp_path)))
    with pytest.raises(ValueError, match="takes no closed_loop"):
        prepare_inputs(GenerateConfig(**base, generator="null:32",
                                      closed_loop={"tolerance": 0.1}))
    with pytest.raises(ValueError, match="null:<size>"):
        prepare_inputs(GenerateConfig(**base, generator="null:3"))
    with pytest.raises(ValueError, match="a recognizer is needed"):
        prepare_inputs(GenerateConfig(**base, generator=str(tmp_path)))
