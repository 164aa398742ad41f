"""`cemiray generate` under failure: a sampler actor SIGKILLed mid-run, a whole job (driver and its
own Ray cluster) killed after its first shard and rerun, and bad inputs refused before anything
is written. Every case ends with exactly N × K rows or with nothing reported as done."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import psutil
import pytest
from helpers import wait_for
from pydantic import ValidationError
from test_generate import GEN_16, ID_DIM, make_inputs

from cemiray.data.parquet_shards import iter_rows, list_shards
from cemiray.pipeline.generate.job import GenerateConfig, run
from cemiray.pipeline.generate.shard_plan import OutputConflictError
from cemiray.pipeline.seeds.table import SeedTableError, random_identities, write_seed_table
from cemiray.runtime.config import ConfigError, load_config

N, K = 20, 4


def _shards(cfg: GenerateConfig) -> list[str]:
    folder = Path(cfg.out) / "parquet"
    return list_shards(str(folder)) if folder.is_dir() else []


def _check_rows(cfg: GenerateConfig, n: int) -> list[dict]:
    rows = list(iter_rows(str(Path(cfg.out) / "parquet")))
    keys = [(r["seed_id"], r["sample"]) for r in rows]
    assert len(rows) == n * K and len(set(keys)) == n * K
    return rows


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("generate-failures")
    paths = make_inputs(root, N, GEN_16)
    paths["root"] = str(root)
    return paths


def _config(inputs: dict[str, str], out: str, **overrides) -> GenerateConfig:
    base = {"seeds": inputs["seeds"], "generator": inputs["generator"],
            "recognizer": inputs["recognizer"], "out": out, "samples_per_identity": K,
            "identities_per_shard": 4, "steps": 2, "images_per_call": 4, "schedule": 0.0,
            "preview_identities": 4}
    return GenerateConfig(**{**base, **overrides})


def _sampler_pids() -> set[int]:
    """Pids of the live sampler actors, from the GCS actor table (the state API needs the
    dashboard, which the test cluster does not run)."""
    import ray._private.state

    return {int(info["Pid"]) for info in ray._private.state.actors().values()
            if "SamplerActor" in info.get("ActorClassName", "") and info["State"] == "ALIVE"
            and info.get("Pid")}


@pytest.fixture(scope="module")
def killed_actor_run(ray_cluster, inputs):
    """A run with a fixed pool of 2 actors, one of them SIGKILLed once the first shard exists."""
    cfg = _config(inputs, str(Path(inputs["root"]) / "killed"), steps=12,
                  closed_loop={"tolerance": 0.01, "max_tries": 3},
                  distributed={"num_workers": 2, "min_workers": 2, "object_store_budget_mb": 64})
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(run(cfg)), daemon=True)
    runner.start()

    def two_actors():
        pids = _sampler_pids()
        return pids if len(pids) == 2 or not runner.is_alive() else None

    pids = wait_for(two_actors, 180, "two live sampler actors")
    wait_for(lambda: _shards(cfg) or not runner.is_alive(), 180, "the first shard")
    assert runner.is_alive() and len(pids) == 2, "generate ended before the kill (see log)"
    done_at_kill = len(_shards(cfg))
    victim = min(pids)
    os.kill(victim, signal.SIGKILL)
    runner.join(timeout=300)
    assert not runner.is_alive(), "generate did not finish after the actor was killed"
    assert result, "generate raised after the kill (see the log above)"
    return {"cfg": cfg, "summary": result, "victim": victim, "pids": pids,
            "done_at_kill": done_at_kill}


@pytest.mark.ray
def test_killed_sampler_actor_still_gives_exactly_n_times_k_rows(killed_actor_run):
    run_ = killed_actor_run
    assert run_["done_at_kill"] < 5, "the whole dataset was written before the kill"
    _check_rows(run_["cfg"], N)
    summary = run_["summary"]
    assert summary["shards_written"] == 5 and summary["images_generated"] == N * K
    assert not psutil.pid_exists(run_["victim"]) or psutil.Process(
        run_["victim"]).status() == psutil.STATUS_ZOMBIE
    workers = {int(pid) for pid in summary["sampler_workers"]}
    print("sampler pids before the kill:", run_["pids"], "images per pid:",
          summary["sampler_workers"], "duplicates dropped:", summary["duplicates_dropped"])
    assert workers - run_["pids"], "no images from the restarted actor"
    assert sum(summary["sampler_workers"].values()) == N * K + summary["duplicates_dropped"]


SUBPROCESS_JOB = """
import sys, ray
ray.init(address="local", num_cpus=2, object_store_memory=300 * 2**20, include_dashboard=False,
         log_to_driver=False)
from cemiray.pipeline.generate.job import GenerateConfig, run
run(GenerateConfig.model_validate_json(sys.argv[1]))
"""


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the job and every process it started (its own Ray cluster), by pid."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for p in family:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=30)
    proc.wait(timeout=30)


@pytest.mark.ray
def test_killed_job_reruns_only_its_missing_shards(ray_cluster, inputs):
    n = 40
    seeds = str(Path(inputs["root"]) / "seeds40.parquet")
    write_seed_table(seeds, np.arange(n) * 7, random_identities(n, ID_DIM, seed=5))
    cfg = _config(inputs, str(Path(inputs["root"]) / "interrupted"), seeds=seeds,
                  distributed={"num_workers": 1}, progress_every_s=1)
    env = {k: v for k, v in os.environ.items() if k != "CEMIRAY_PROGRESS"}  # the defaults
    proc = subprocess.Popen([sys.executable, "-c", SUBPROCESS_JOB, cfg.model_dump_json()],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _shards(cfg) or proc.poll() is not None, 240, "the first shard")
    finally:
        _kill_tree(proc)
    log = proc.stdout.read().decode(errors="replace")[-3000:]
    kept = {p: (Path(p).stat().st_mtime_ns, Path(p).read_bytes()) for p in _shards(cfg)}
    assert 1 <= len(kept) < 10, f"{len(kept)} of 10 shards at the kill; job log:\n{log}"
    # what the user saw: progress lines of its own, no Ray Data progress block
    assert re.search(r"generate: \d+/160 images \(\d+%\).*shards written", log), log
    assert not re.search(r"Running Dataset|Starting execution of Dataset|✔️", log), log
    assert not (Path(cfg.out) / "manifest.json").exists(), "a killed run reported itself done"

    summary = run(cfg.model_copy(update={"preview_samples": 2}))  # an execution-only change
    assert summary["shards_skipped"] == len(kept)
    assert summary["shards_written"] == 10 - len(kept)
    # the parts the killed run had written for unfinished shards are counted, not redone
    assert summary["images_generated"] + summary["images_reused"] == (10 - len(kept)) * 4 * K
    assert (summary["parts_reused"] > 0) == (summary["images_reused"] > 0)
    assert not (Path(cfg.out) / "parts").exists()
    assert {p: (Path(p).stat().st_mtime_ns, Path(p).read_bytes()) for p in kept} == kept
    rows = _check_rows(cfg, n)
    assert sorted({r["label"] for r in rows}) == list(range(n))
    assert not [f for f in os.listdir(Path(cfg.out) / "parquet") if f.startswith(".")]
    assert json.loads((Path(cfg.out) / "manifest.json").read_text())["counts"]["images"] == n * K


def _nothing_written(out: Path) -> None:
    assert not (out / "manifest.json").exists() and not (out / "plan.json").exists()
    assert not list(out.glob("parquet/*.parquet"))


def test_unreadable_seed_table_is_refused_naming_the_file(inputs, tmp_path):
    missing = tmp_path / "nowhere.parquet"
    with pytest.raises(SeedTableError, match=f"{missing}: cannot read the seed table"):
        run(_config(inputs, str(tmp_path / "a"), seeds=str(missing)))
    _nothing_written(tmp_path / "a")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(SeedTableError, match=f"{corrupt}: not a readable Parquet file"):
        run(_config(inputs, str(tmp_path / "b"), seeds=str(corrupt)))
    _nothing_written(tmp_path / "b")


def test_empty_and_malformed_seed_tables_name_file_and_row(inputs, tmp_path):
    seeds = tmp_path / "seeds.parquet"
    emb = random_identities(6, ID_DIM, seed=3)
    cases = [
        (([], np.zeros((0, ID_DIM))), "the seed table holds no rows"),
        (([1, 2, 3, 4, 5, 3], emb), r"seed_id 3 appears in rows \[2, 5\]"),
        (([1, 2, 3, 4, 5, 6], random_identities(6, ID_DIM + 1)), "row 0: embedding has 33 values"),
        (([1, 2, 3, 4, 5, 6], emb * np.array([[1], [1], [1], [1.5], [1], [1]])),
         "row 3: embedding norm is 1.500000"),
    ]
    for (ids, embeddings), message in cases:
        write_seed_table(str(seeds), ids, embeddings)
        with pytest.raises(SeedTableError, match=f"{seeds}: {message}"):
            run(_config(inputs, str(tmp_path / "out"), seeds=str(seeds)))
        _nothing_written(tmp_path / "out")


def test_schedules_outside_minus_one_one_fail_at_config_time(inputs, tmp_path):
    for schedule in (1.5, [0.0, -1.2], {"kind": "uniform", "low": 0.2, "high": 1.01},
                     {"kind": "mixture", "weights": {0.0: 1.0, float("nan"): 1.0}}):
        with pytest.raises(ValidationError, match=r"m must be a finite number in \[-1, 1\]"):
            _config(inputs, str(tmp_path / "out"), schedule=schedule)
    with pytest.raises(ConfigError, match=r"schedule\.constant.*m must be a finite number"):
        load_config(GenerateConfig, None, [f"seeds={inputs['seeds']}", "generator=g",
                                           "recognizer=r", "schedule.kind=constant",
                                           "schedule.m=nan"])
    _nothing_written(tmp_path / "out")


def test_judge_without_inquiry_images_is_refused(inputs, tmp_path):
    with pytest.raises(SeedTableError, match="no 'image' column; the judge"):
        run(_config(inputs, str(tmp_path / "out"), judge=inputs["recognizer"]))
    _nothing_written(tmp_path / "out")


@pytest.mark.ray
def test_output_holding_another_config_is_refused(killed_actor_run):
    cfg = killed_actor_run["cfg"]
    manifest = Path(cfg.out) / "manifest.json"
    before = {p: Path(p).stat().st_mtime_ns for p in _shards(cfg)}
    before[str(manifest)] = manifest.stat().st_mtime_ns
    with pytest.raises(OutputConflictError, match=r"config\.schedule\.m: 0\.0 there, 0\.3 now"):
        run(cfg.model_copy(update={"schedule": GenerateConfig.model_validate(
            {**cfg.model_dump(), "schedule": 0.3}).schedule}))
    with pytest.raises(OutputConflictError, match=r"config\.steps: 12 there, 3 now"):
        run(cfg.model_copy(update={"sampling": cfg.sampling.model_copy(update={"steps": 3})}))
    assert {p: Path(p).stat().st_mtime_ns for p in before} == before
    again = run(cfg.model_copy(update={"distributed": cfg.distributed.model_copy(
        update={"num_workers": 1, "min_workers": 1}), "exports": ["imagefolder"]}))
    assert again["shards_skipped"] == 5 and again["images_generated"] == 0
