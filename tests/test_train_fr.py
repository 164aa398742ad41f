"""Real 2-worker Ray Train + DeepSpeed ZeRO-2 runs of train-fr on CPU: one worker killed mid-run
(the run resumes from its last checkpoint and finishes), and Partial FC (class centres sharded
across the workers: train, checkpoint, export, resume). Each fit serves many assertions (a fit
costs ~20 s of worker start-up here)."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time

import pytest
from helpers import wait_for

from cemiray.data import storage
from cemiray.train.engine import read_metrics
from cemiray.train.fr import TrainFRConfig, run


@pytest.mark.ray
@pytest.mark.slow
def test_train_fr_two_workers_zero2_survives_a_killed_worker(ray_cluster, tmp_path):
    out = tmp_path / "fr"
    cfg = TrainFRConfig(
        out=str(out),
        data="toyfaces:?seed=0&ids=0-15&samples=8&size=32",
        backbone="iresnet18",
        input_size=32,
        embedding_dim=64,
        batch_size=8,
        max_steps=40,
        lr=0.05,
        log_every=1,
        read_parts=2,
        shuffle_buffer=0,  # the other tests train with the default buffer and prefetch
        prefetch_batches=0,
        distributed={
            "num_workers": 2,
            "zero_stage": 2,
            "checkpoint_every": 8,
            "max_failures": 2,
            "storage_path": str(tmp_path / "ray_results"),
            "torch_threads": 1,
        },
    )
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(run(cfg)), daemon=True)
    runner.start()
    metrics_url = str(out / "metrics.jsonl")

    def checkpoint_registered():
        # Ray Train's controller records a reported checkpoint in this snapshot; a checkpoint
        # reported by the workers but not yet collected by the controller is lost on a failure.
        for snap in (tmp_path / "ray_results").glob("*/checkpoint_manager_snapshot.json"):
            latest = json.loads(snap.read_text()).get("latest_checkpoint_result")
            if latest and latest["metrics"]["step"] < 40:
                return latest["metrics"]["step"]
        return None

    first_ckpt = wait_for(checkpoint_registered, 240, "a registered checkpoint")
    assert storage.exists(metrics_url)
    victim = json.loads((out / "workers" / "rank-1.json").read_text())["pid"]
    os.kill(victim, signal.SIGKILL)
    t_kill = time.monotonic()
    runner.join(timeout=400)
    waited = time.monotonic() - t_kill
    assert not runner.is_alive(), f"train-fr still running {waited:.0f} s after the kill"
    assert result, "train-fr raised (see the log above)"

    records = read_metrics(metrics_url)
    starts = [r for r in records if r["event"] == "start"]
    assert len(starts) == 2, "the worker group should have been started twice"
    assert starts[1]["resumed"], "the restarted workers did not resume from the checkpoint"
    assert starts[1]["step"] >= first_ckpt and starts[1]["step"] % 8 == 0
    done = [r for r in records if r["event"] == "done"]
    assert done and done[-1]["step"] == 40
    losses = [r["loss"] for r in records if r["event"] == "train"]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, "loss did not fall"
    assert json.loads((out / "checkpoint.json").read_text())["step"] == 40
    for name in ("backbone", "head"):
        assert (out / name / "config.json").is_file()
        assert (out / name / "model.safetensors").is_file()


@pytest.mark.ray
@pytest.mark.slow  # 2 min; the sharded head's arithmetic is held by test_partial_fc on every run
def test_train_fr_partial_fc_on_two_workers_trains_resumes_and_exports(ray_cluster, tmp_path,
                                                                        capsys):
    """Partial FC: each of 2 Ray Train workers holds 8 of the 16 class centres (75% of them
    used per step) outside DeepSpeed, whose ZeRO-2 engine trains the backbone data-parallel.
    One fit trains, saves each rank's shard in its checkpoints and exports the backbone and the
    whole head; a second fit resumes from the last checkpoint."""
    import torch

    from cemiray.data.verification_bin import decode_bin
    from cemiray.eval.centre_groups import load_centres
    from cemiray.eval.verification import evaluate_verification_set
    from cemiray.models.recognizer import load_recognizer
    from cemiray.pipeline.render import RenderConfig, write_verification_bin

    held_out = str(tmp_path / "held_out.bin")
    write_verification_bin(RenderConfig(first_identity=16, num_identities=10,
                                        samples_per_identity=6, bin_pairs=100), held_out)
    out = tmp_path / "pfc"
    cfg = TrainFRConfig(
        out=str(out), data="toyfaces:?seed=0&ids=0-15&samples=8&size=32", input_size=32,
        embedding_dim=64, batch_size=8, max_steps=24, lr=0.05, log_every=1, read_parts=2,
        partial_fc=True, sample_rate=0.75, verification=held_out, eval_every=10**6,
        distributed={"num_workers": 2, "zero_stage": 2, "checkpoint_every": 12,
                     "max_failures": 0, "torch_threads": 1, "progress_every_s": 1},
    )
    result = run(cfg)
    # What the driver's console showed: progress lines read from the workers' metrics, and a
    # duration counted from launch; Ray Train's checkpoints went under `out`.
    console = capsys.readouterr().out
    assert re.search(r"train-fr: step \d+/24 \(\d+%\)", console), console
    assert re.search(r"train-fr: done in \d+ s since launch", console), console
    assert (out / "ray_results").is_dir()
    records = read_metrics(str(out / "metrics.jsonl"))
    losses = [r["loss"] for r in records if r["event"] == "train"]
    assert len(losses) == 24
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5, f"loss did not fall: {losses}"
    done = [r for r in records if r["event"] == "done"][-1]
    assert done["step"] == 24 and result["step"] == 24

    # The checkpoint holds each rank's shard; the exported head is both, in class order.
    checkpoint = json.loads((out / "checkpoint.json").read_text())["path"]
    shards = [torch.load(os.path.join(checkpoint, "partial_fc", f"rank-{r:05d}.pt"),
                         weights_only=True) for r in range(2)]
    assert [(s["class_start"], s["num_local"]) for s in shards] == [(0, 8), (8, 8)]
    centres = load_centres(str(out / "head"))
    saved = torch.nn.functional.normalize(torch.cat([s["head"]["weight"] for s in shards]))
    assert centres.shape == (16, 64)
    assert torch.allclose(torch.from_numpy(centres).float(), saved, atol=1e-6)
    head_config = json.loads((out / "head" / "config.json").read_text())
    assert head_config["num_classes"] == 16
    assert head_config["partial_fc"] == {"workers": 2, "sample_rate": 0.75}

    # The exported backbone loads and scores the held-out pairs as the worker measured.
    recognizer = load_recognizer(str(out / "backbone"))
    images, issame = decode_bin(held_out, 32)
    metrics = evaluate_verification_set(recognizer, images, issame)
    assert 0.0 <= metrics["accuracy_mean"] <= 1.0
    assert metrics["accuracy_mean"] == pytest.approx(done["val_acc"], abs=0.011)

    # Resume: both shards and the backbone come back, so training goes on from where it was
    # (fresh centres would put the loss back near its first values).
    resumed_out = tmp_path / "pfc_resumed"
    run(cfg.model_copy(update={"out": str(resumed_out), "resume_from": checkpoint,
                               "max_steps": 30}))
    resumed = read_metrics(str(resumed_out / "metrics.jsonl"))
    start = next(r for r in resumed if r["event"] == "start")
    assert start["resumed"] and start["step"] == 24
    again = [r["loss"] for r in resumed if r["event"] == "train"]
    assert len(again) == 6
    assert sum(again) / 6 < sum(losses[:5]) / 5, (losses, again)
