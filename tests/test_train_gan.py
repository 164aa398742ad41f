"""train-gan on a real 2-worker Ray Train run on CPU (plain torch.distributed): a worker is
killed mid-run and the run resumes from its checkpoint; metrics, a pickle-free checkpoint and the
exported EMA generator folder; a later run continues from the last checkpoint. Then the seeds job
with a StyleGAN folder as its identity source, and the bad inputs refused before any work starts.
A 16 px three-level StyleGAN keeps it fast."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import wait_for
from safetensors.torch import load_file, save_file

from cemiray.data.images import decode_image
from cemiray.models import get_backbone
from cemiray.models.recognizer import load_recognizer
from cemiray.models.serialization import save_model_folder
from cemiray.models.stylegan import Generator, sample_gan
from cemiray.models.stylegan_io import load_gan, save_gan
from cemiray.models.stylegan_training import save_training_state
from cemiray.pipeline.seeds.job import SeedsConfig
from cemiray.pipeline.seeds.job import run as run_seeds
from cemiray.pipeline.seeds.table import read_seed_table
from cemiray.train.engine import read_metrics
from cemiray.train.gan import TrainGANConfig, build_state, run

TINY = {"image_size": 16, "channels": (32, 16, 8), "z_dim": 32, "w_dim": 32}
STEPS, EVERY = 100, 10


def train_config(tmp: Path) -> TrainGANConfig:
    return TrainGANConfig(
        out=str(tmp / "gan"), data="toyfaces:?seed=0&ids=20000-20007&samples=4&size=16",
        preset_overrides=TINY, batch_size=8, max_steps=STEPS, r1_every=4, log_every=5,
        read_parts=2, ema_kimg=0.1,
        distributed={"num_workers": 2, "checkpoint_every": EVERY, "max_failures": 2,
                     "storage_path": str(tmp / "ray_results"), "torch_threads": 1,
                     "progress_every_s": 0})


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory) -> dict:
    """One fit whose rank-1 worker is killed after the first registered checkpoint."""
    tmp = tmp_path_factory.mktemp("train_gan")
    cfg = train_config(tmp)
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(run(cfg)), daemon=True)
    runner.start()

    def checkpoint_registered():
        for snap in (tmp / "ray_results").glob("*/checkpoint_manager_snapshot.json"):
            latest = json.loads(snap.read_text()).get("latest_checkpoint_result")
            if latest and latest["metrics"]["step"] < STEPS:
                return latest["metrics"]["step"]
        return None

    first = wait_for(checkpoint_registered, 150, "a registered checkpoint")
    victim = json.loads((tmp / "gan" / "workers" / "rank-1.json").read_text())["pid"]
    os.kill(victim, signal.SIGKILL)
    runner.join(timeout=200)
    assert not runner.is_alive(), "train-gan still running long after the kill"
    assert result, "train-gan raised (see the log above)"
    return {"cfg": cfg, "result": result, "first_checkpoint": first, "out": tmp / "gan"}


@pytest.mark.ray
@pytest.mark.slow
def test_train_gan_survives_a_killed_worker_and_exports_the_ema_generator(trained):
    out, result = trained["out"], trained["result"]
    records = read_metrics(str(out / "metrics.jsonl"))
    starts = [r for r in records if r["event"] == "start"]
    assert len(starts) == 2 and not starts[0]["resumed"] and starts[1]["resumed"]
    assert starts[0]["total_steps"] == STEPS and starts[0]["world_size"] == 2
    assert starts[1]["step"] >= trained["first_checkpoint"] and starts[1]["step"] % EVERY == 0
    assert starts[0]["images"] == 16  # each worker holds its half of the 32 images
    train = [r for r in records if r["event"] == "train"]
    for key in ("loss_g", "loss_d", "d_real", "d_fake", "r1", "img_per_s"):
        assert all(math.isfinite(r[key]) for r in train), key
    assert all(r["r1"] > 0 for r in train)
    # D learns to tell the 32 real faces from a generator that starts as noise
    late = train[len(train) // 2:]
    assert np.mean([r["d_real"] - r["d_fake"] for r in late]) > 0
    assert np.mean([r["loss_d"] for r in late]) < 2 * math.log(2)
    done = [r for r in records if r["event"] == "done"]
    assert done and done[-1]["step"] == result["step"] == STEPS
    assert done[-1]["images_seen"] == STEPS * 2 * 8

    checkpoint = json.loads((out / "checkpoint.json").read_text())
    folder = Path(checkpoint["path"])
    assert checkpoint["step"] == STEPS
    assert sorted(p.name for p in folder.iterdir()) == [
        "discriminator.safetensors", "gan_state.json", "generator.safetensors",
        "generator_ema.safetensors", "optimizer_D.safetensors", "optimizer_G.safetensors"]
    state = json.loads((folder / "gan_state.json").read_text())
    assert (state["kind"], state["step"], state["images_seen"]) == (
        "cemiray-gan-checkpoint", STEPS, STEPS * 16)

    gen, disc, meta = load_gan(result["generator"], discriminator=True)
    assert meta["step"] == STEPS and meta["trainer"] == "train-gan" and disc is not None
    ema = load_file(folder / "generator_ema.safetensors")
    assert all(torch.equal(ema[k], v) for k, v in gen.state_dict().items())
    torch.manual_seed(0)
    fresh = Generator("compact", **TINY).state_dict()
    assert any(not torch.equal(fresh[k], v) for k, v in gen.state_dict().items())
    images = sample_gan(gen, [1, 2, 3], truncation=0.7)
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8


@pytest.mark.ray
@pytest.mark.slow
def test_resume_from_continues_at_the_checkpoint_step(trained):
    out = trained["out"]
    checkpoint = json.loads((out / "checkpoint.json").read_text())
    more = trained["cfg"].model_copy(update={"resume_from": checkpoint["path"],
                                             "max_steps": STEPS + 6})
    more.distributed.max_failures = 0
    summary = run(more)
    assert summary["step"] == STEPS + 6
    records = read_metrics(str(out / "metrics.jsonl"))
    starts = [r for r in records if r["event"] == "start"]
    assert len(starts) == 3 and starts[2]["resumed"] and starts[2]["step"] == STEPS
    train = [r for r in records if r["event"] == "train"]
    assert train[-1]["step"] == STEPS + 6 and train[-1]["images_seen"] == (STEPS + 6) * 16
    assert load_gan(summary["generator"])[2]["step"] == STEPS + 6


@pytest.fixture(scope="module")
def recognizer(tmp_path_factory) -> str:
    torch.manual_seed(0)
    model = get_backbone("iresnet18", input_size=16, num_features=32)
    url = str(tmp_path_factory.mktemp("rec") / "iresnet18")
    save_model_folder(model, url, dict(model.config))
    return url


def tiny_gan(url: str) -> str:
    torch.manual_seed(3)
    gen = Generator("compact", **TINY)
    with torch.no_grad():
        gen.mapping.w_avg.normal_()
    return save_gan(url, gen, meta={"step": 0})


@pytest.mark.ray
def test_seeds_from_a_gan_folder(ray_cluster, recognizer, tmp_path):
    gan = tiny_gan(str(tmp_path / "gan"))
    out = tmp_path / "seeds"
    result = run_seeds(SeedsConfig(
        out=str(out), recognizer=recognizer, inquiry=[], leakage_data=None, gan=gan,
        gan_samples=6, truncation=0.8, generator_seed=40, generator_batch=4,
        uniqueness_threshold=1.0, batch_size=8, num_actors_max=1))
    table = read_seed_table(result["table"], expected_dim=32)
    assert len(table) == 6 and set(table.sources) == {f"gan:{gan}"}
    report = json.loads((out / "seeds_report.json").read_text())
    assert list(report["candidates"]["by_source"].values()) == [6]
    gen, _, _ = load_gan(gan)
    rec = load_recognizer(recognizer)
    again = sample_gan(gen, [40 + k for k in range(6)], truncation=0.8)
    for seed_id, emb, image in zip(table.seed_ids, table.embeddings, table.images, strict=True):
        pixels = decode_image(image)
        assert np.abs(pixels.astype(int) - again[seed_id].astype(int)).max() <= 1
        np.testing.assert_allclose(emb, rec.embed(pixels[None])[0], atol=1e-4)
    saved = json.loads((out / "config.json").read_text())
    assert saved["gan"] == gan and saved["truncation"] == 0.8


# The command lines, each through `cemiray.cli.main`, in one fresh process (one start-up, not one
# per command): its exit code and what it wrote to stderr, per command.
COMMANDS = r'''
import contextlib, io, json, sys
from cemiray.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        results.append([main(argv), err.getvalue()])
with open(sys.argv[2], "w") as f:
    json.dump(results, f)
'''


def cemiray(*commands: list[str], cwd: Path) -> list[tuple[int, str]]:
    env = {k: v for k, v in os.environ.items() if k != "CEMIRAY_TRACEBACK"}
    results = cwd / "commands.json"
    proc = subprocess.run([sys.executable, "-c", COMMANDS, json.dumps(commands), str(results)],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr
    return [tuple(r) for r in json.loads(results.read_text())]


def refused(result: tuple[int, str], job: str, out: Path) -> str:
    """The one `cemiray JOB: ...` line of a command refused before its out folder exists."""
    code, stderr = result
    assert code == 2, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"cemiray {job}: "), stderr[-3000:]
    assert not out.exists(), "the job got as far as creating its out folder"
    assert "Started a local Ray instance" not in stderr
    return lines[0]


def test_bad_gan_inputs_are_refused_before_any_work(recognizer, tmp_path):
    gan = tiny_gan(str(tmp_path / "gan"))
    out = tmp_path / "out"
    seeds = ["seeds", f"recognizer={recognizer}", "inquiry=[]", "leakage_data=null",
             f"out={out}", "gan_samples=4"]
    broken = tmp_path / "broken_gan"
    shutil.copytree(gan, broken)
    weights = broken / "generator.safetensors"
    key = "synthesis.blocks.2.conv1.weight"
    save_file({**load_file(weights), key: torch.zeros(8, 4, 3, 3)}, weights)
    # a checkpoint of another architecture is refused before Ray starts
    nets, opts = build_state(train_config(tmp_path).resolved_preset(), 0.002, 16)
    save_training_state(str(tmp_path / "ckpt"), nets, opts, {"step": 3, "images_seen": 48})

    truncation, shape, not_gan, architecture = cemiray(
        [*seeds, f"gan={gan}", "truncation=1.5"], [*seeds, f"gan={broken}"],
        [*seeds, f"gan={recognizer}"],
        ["train-gan", f"resume_from={tmp_path / 'ckpt'}", f"out={out}"], cwd=tmp_path)
    line = refused(truncation, "seeds", out)
    assert "truncation" in line and "1" in line
    line = refused(shape, "seeds", out)
    assert f"{weights}: tensor '{key}' has shape (8, 4, 3, 3)" in line
    line = refused(not_gan, "seeds", out)
    assert f"{recognizer}: not a StyleGAN generator folder" in line
    line = refused(architecture, "train-gan", out)
    assert f"resume_from {tmp_path / 'ckpt'}: it trained another architecture" in line
    with pytest.raises(ValueError, match="less than or equal to 1"):
        SeedsConfig(recognizer=recognizer, gan=gan, gan_samples=2, truncation=1.01)
    with pytest.raises(ValueError, match="give gan together with gan_samples"):
        SeedsConfig(recognizer=recognizer, gan=gan)
