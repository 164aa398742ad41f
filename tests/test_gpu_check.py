"""`cemiray gpu-check` without a GPU: the sections a GPU run measures (the sampler sweep in bf16
and fp16 with the compile path traced by the 'eager' backend, `generate` with two sampler actors,
a bf16 `train-fr`, one served `POST /v1/generate`) run end to end at tiny sizes on the CPU and
the session's Ray cluster, and the one JSON object holds every section with sane values."""

from __future__ import annotations

import json

import pytest
import torch

from cemiray.bench.gpu_check import GpuCheckConfig, GpuCheckFailed, resolve, run


def test_scale_follows_the_device_and_a_given_key_wins():
    on_cpu = resolve(GpuCheckConfig(sampler={"batches": [3]}), torch.device("cpu"))
    assert on_cpu.scale == "tiny" and on_cpu.sampler.batches == [3]
    assert on_cpu.sampler.steps == 4 and on_cpu.sampler.compile is False
    assert on_cpu.sampler.repeats == 1  # the tiny scale's, over the section's own default
    assert resolve(GpuCheckConfig(sampler={"repeats": 3}), torch.device("cpu")).sampler.repeats == 3
    on_cuda = resolve(GpuCheckConfig(), torch.device("cuda"))
    assert on_cuda.scale == "paper" and on_cuda.sampler.compile is True
    assert (on_cuda.sampler.preset, on_cuda.sampler.steps) == ("paper", 20)
    assert on_cuda.train_fr.backbone == "iresnet50" and on_cuda.serve.num_gpus == 0.5
    small = resolve(GpuCheckConfig(scale="tiny"), torch.device("cuda"))
    assert small.sampler.preset == "tiny" and small.generate.id_dim == 32


@pytest.mark.ray
def test_gpu_check_on_the_cpu_reports_every_section(ray_cluster, tmp_path, capsys):
    from ray import serve
    from serve_helpers import release_shared

    from cemiray.bench.unet_flops import unet_flops_per_image

    release_shared()  # gpu-check refuses a cluster where Serve already runs
    out = tmp_path / "gpu_check"
    try:
        figures = run(GpuCheckConfig(out=str(out), device="cpu",
                                     sampler={"compile": True, "compile_backend": "eager"}))
    except GpuCheckFailed as failed:  # every section ran; checked below, the failed one last
        figures = failed.figures
    stdout = capsys.readouterr().out  # the JSON first (Ray's late messages may follow it)
    printed, _ = json.JSONDecoder().raw_decode(stdout)
    assert printed == json.loads((out / "gpu_check.json").read_text())
    assert printed["benchmark"] == "gpu_check" and printed["figures"]["device"] == figures["device"]
    assert set(figures) == {"device", "sampler", "generate", "train_fr", "serve", "failed",
                            "wall_seconds"}
    assert figures["failed"] in ([], ["train_fr"]), figures["failed"]

    device = figures["device"]
    assert (device["type"], device["cuda"], device["scale"]) == ("cpu", False, "tiny")
    assert device["torch"] == torch.__version__ and device["name"]

    sampler = figures["sampler"]
    assert sampler["flops_per_image_step"] == unet_flops_per_image("tiny") > 0
    assert set(sampler["gemm_flops_per_s"]) == {"bfloat16", "float16"}
    assert all(peak > 0 for peak in sampler["gemm_flops_per_s"].values())
    assert [(p["dtype"], p["batch"]) for p in sampler["eager"]] == [
        ("bfloat16", 2), ("bfloat16", 4), ("float16", 2), ("float16", 4)]
    for p in [*sampler["eager"], sampler["compiled"]]:
        assert p["img_per_s"] > 0 and p["utilisation"] > 0
        assert p["unet_flops_per_s"] == pytest.approx(p["img_per_s"] * 4 * unet_flops_per_image("tiny"))
    compiled = sampler["compiled"]
    assert compiled["compiled"] is True and compiled["backend"] == "eager"
    eager_best = max(sampler["eager"], key=lambda p: p["img_per_s"])
    assert (compiled["dtype"], compiled["batch"]) == (eager_best["dtype"], eager_best["batch"])
    assert sampler["fastest"]["img_per_s"] == max(eager_best["img_per_s"], compiled["img_per_s"])
    assert sampler["channels_last"] is True and sampler["image_size"] == 32

    generate = figures["generate"]
    assert generate["images"] == 16 * 4 and sum(generate["images_per_worker"]) == 64
    assert generate["sampler_workers"] == 2 and generate["images_per_s"] > 0

    served = figures["serve"]
    assert served["status"] == 200 and served["images"] == 2
    assert served["latency_ms"] > 0 and served["first_latency_ms"] > 0
    assert not serve.status().applications  # the app gpu-check started is gone again

    train = figures["train_fr"]
    assert not figures["failed"], figures
    assert train["bf16"] is True and train["steps"] == 6 and train["windows"] >= 2
    assert train["img_per_s"] > 0 and train["steps_per_s"] == pytest.approx(train["img_per_s"] / 8)
