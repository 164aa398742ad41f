"""train-gen on a real 2-worker Ray Train + DeepSpeed ZeRO-2 run on CPU (in the `slow` variant a
worker is killed mid-run and the run resumes from its checkpoint); the loss falls; the EMA
weights are exported as a pipeline folder that loads and samples; a later run continues from the
last checkpoint. Tiny 16 px images, a tiny UNet and a random-init IResNet-18 as E_id keep it
fast."""

from __future__ import annotations

import json
import os
import signal
import threading

import pytest
import torch
from helpers import TINY, wait_for

from cemiray.data import storage
from cemiray.diffusion import load_pipeline
from cemiray.eval.control import control_report, save_grid_png
from cemiray.models import get_backbone
from cemiray.models.recognizer import load_recognizer
from cemiray.models.serialization import save_model_folder
from cemiray.train.ema import EmaWeights
from cemiray.train.engine import read_metrics
from cemiray.train.gen import TrainGenConfig, run

STEPS = 40


def test_config_refuses_conflicting_options():
    with pytest.raises(ValueError, match="ZeRO"):
        TrainGenConfig(recognizer="r", distributed={"zero_stage": 3})
    with pytest.raises(ValueError, match="not both"):
        TrainGenConfig(recognizer="r", resume_from="a", init_from="b")
    with pytest.raises(ValueError, match="m_range"):
        TrainGenConfig(recognizer="r", m_range=(0.5, 0.1))
    assert TrainGenConfig(recognizer="r").resolved_pairing() == "identity"
    assert TrainGenConfig(recognizer="r", preset="paper").resolved_pairing() == "self"


def test_ema_warms_up_then_tracks_slowly():
    module = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(module.weight)
    ema = EmaWeights(module, decay=0.99)
    with torch.no_grad():
        module.weight.fill_(1.0)
    ema.update(module, step=0)  # decay min(0.99, 1/10) = 0.1
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 0.9))
    ema.update(module, step=10_000)  # decay 0.99
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 0.9 * 0.99 + 0.01))
    target = torch.nn.Linear(2, 1, bias=False)
    ema.copy_to(target)
    assert torch.equal(target.weight, ema.shadow["weight"])


@pytest.mark.ray
@pytest.mark.parametrize("kill", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["trains", "killed_worker"])
def test_train_gen_two_workers_trains_survives_a_killed_worker_and_continues(
        ray_cluster, tmp_path, kill):
    recognizer = str(tmp_path / "eid")
    torch.manual_seed(0)
    backbone = get_backbone("iresnet18", input_size=16, num_features=32)
    save_model_folder(backbone, recognizer, backbone.config)
    out = tmp_path / "gen"
    cfg = TrainGenConfig(
        out=str(out),
        data="toyfaces:?seed=0&ids=0-7&samples=6&size=16",
        recognizer=recognizer,
        preset_overrides=TINY,
        batch_size=8,
        max_steps=STEPS,
        lr=3e-3,
        warmup_steps=0,
        log_every=1,
        read_parts=2,
        genuine_per_image=4,
        impostors_per_image=4,
        min_bin_pairs=4,
        distributed={"num_workers": 2, "zero_stage": 2, "checkpoint_every": 8,
                     "max_failures": 2, "storage_path": str(tmp_path / "ray_results"),
                     "torch_threads": 1},
    )
    result: dict = {}
    runner = threading.Thread(target=lambda: result.update(run(cfg)), daemon=True)
    runner.start()

    def checkpoint_registered():
        for snap in (tmp_path / "ray_results").glob("*/checkpoint_manager_snapshot.json"):
            latest = json.loads(snap.read_text()).get("latest_checkpoint_result")
            if latest and latest["metrics"]["step"] < STEPS:
                return latest["metrics"]["step"]
        return None

    if kill:
        first_ckpt = wait_for(checkpoint_registered, 120, "a registered checkpoint")
        victim = json.loads((out / "workers" / "rank-1.json").read_text())["pid"]
        os.kill(victim, signal.SIGKILL)
    runner.join(timeout=400)
    assert not runner.is_alive(), "train-gen still running long after the kill"
    assert result, "train-gen raised (see the log above)"

    records = read_metrics(str(out / "metrics.jsonl"))
    starts = [r for r in records if r["event"] == "start"]
    assert len(starts) == 1 + kill
    if kill:
        assert starts[1]["resumed"]
        assert starts[1]["step"] >= first_ckpt and starts[1]["step"] % 8 == 0
    assert starts[0]["pairing"] == "identity" and starts[0]["pairs"] > 0
    done = [r for r in records if r["event"] == "done"]
    assert done and done[-1]["step"] == STEPS
    train = [r for r in records if r["event"] == "train"]
    for key in ("total", "mse", "simmat", "s_mean", "s_inquiry_mean", "img_per_s"):
        assert key in train[-1], key
    mse = [r["mse"] for r in train]
    # v-prediction (the tiny preset's target) falls more slowly over 40 steps than ε did
    assert sum(mse[-5:]) / 5 < 0.9 * sum(mse[:5]) / 5, "the denoising loss did not fall"

    pipe = load_pipeline(str(out / "generator"))
    assert {"unet", "condition_encoder", "scheduler"} <= set(os.listdir(out / "generator"))
    ids = torch.nn.functional.normalize(torch.randn(2, 32), dim=1)
    images = pipe(ids, [0.0, 1.0], seeds=[1, 2], num_inference_steps=2).images
    assert images.shape == (2, 16, 16, 3) and images.dtype.name == "uint8"
    report = control_report(pipe, load_recognizer(recognizer), ids, targets=(0.0, 0.5, 1.0),
                            steps=2, samplers=(("dpmsolver++", 2),), max_tries=2,
                            guidance_scale=2.0, guidance_m=0.0)
    metrics = report.metrics
    assert [t["target"] for t in metrics["per_target"]] == [0.0, 0.5, 1.0]
    assert set(metrics["samplers"]) == {"ddim-2", "dpmsolver++-2", "ddim-2-unguided"}
    assert metrics["guidance"] == {"guidance_scale": 2.0, "guidance_m": 0.0}
    assert -1 <= metrics["spearman"] <= 1 and metrics["closed_loop"]["mean_tries"] >= 1
    assert report.images.shape == (2, 3, 16, 16, 3) and report.achieved.shape == (2, 3, 1)
    save_grid_png(report.images, str(tmp_path / "grid.png"))
    assert (tmp_path / "grid.png").read_bytes()[:4] == b"\x89PNG"

    checkpoint = json.loads((out / "checkpoint.json").read_text())
    assert checkpoint["step"] == STEPS and storage.exists(checkpoint["path"])
    more = cfg.model_copy(update={"resume_from": checkpoint["path"], "max_steps": STEPS + 4})
    more.distributed.max_failures = 0
    summary = run(more)
    assert summary["step"] == STEPS + 4
    starts = [r for r in read_metrics(str(out / "metrics.jsonl")) if r["event"] == "start"]
    assert len(starts) == 2 + kill and starts[-1]["resumed"] and starts[-1]["step"] == STEPS
