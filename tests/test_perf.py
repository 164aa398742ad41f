"""The measuring parts of the performance benchmarks, without Ray and without long runs: FLOP
counting against a count made from the layers' shapes, the GEMM ceiling, median_ratio, and the
bare sampler loop's micro-batches against the generate job's own chunking."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from cemiray.bench.common import median_ratio
from cemiray.bench.generate import MemoryMonitor, actor_threads, micro_batches
from cemiray.bench.serve import BenchServeConfig, replica_threads
from cemiray.bench.unet_flops import (
    BenchUNetConfig,
    UNetRunner,
    build_unet,
    measured_gemm_peak,
    unet_flops_per_image,
    unet_inputs,
    unet_throughput,
)
from cemiray.pipeline.generate.job import GenerateConfig
from cemiray.pipeline.generate.schedules import image_seeds
from cemiray.pipeline.seeds.table import SeedTable, random_identities
from cemiray.runtime.config import ConfigError, load_config


def layer_flops(preset: str) -> float:
    """FLOPs of one forward of one image from the shapes each layer sees (multiply-add = 2):
    convolutions, linear layers, and the two matmuls of every attention (QKᵀ and AV)."""
    unet = build_unet(preset)
    total = [0.0]

    def conv(module: nn.Conv2d, args: tuple, out: torch.Tensor) -> None:
        per_output = module.in_channels // module.groups * math.prod(module.kernel_size)
        total[0] += 2.0 * out.numel() * per_output

    def linear(module: nn.Linear, args: tuple, out: torch.Tensor) -> None:
        total[0] += 2.0 * out.numel() * module.in_features

    def attention(module: Attention, args: tuple, kwargs: dict, out: torch.Tensor) -> None:
        query = args[0]
        context = kwargs.get("encoder_hidden_states")
        keys = (context if context is not None else query).shape[1]
        total[0] += 2 * 2.0 * query.shape[0] * query.shape[1] * keys * module.inner_dim

    for module in unet.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(conv)
        elif isinstance(module, nn.Linear):
            module.register_forward_hook(linear)
        elif isinstance(module, Attention):
            module.register_forward_hook(attention, with_kwargs=True)
    with torch.no_grad():
        unet(**unet_inputs(preset, 1))
    return total[0]


def test_flop_counter_matches_layer_shapes():
    counted = unet_flops_per_image("tiny")
    by_layers = layer_flops("tiny")
    assert by_layers > 1e8
    assert abs(counted - by_layers) / by_layers < 0.10, (counted, by_layers)
    assert unet_flops_per_image("small") > 3 * counted


def test_gemm_peak_is_positive_and_finite():
    rate = measured_gemm_peak("cpu", torch.float32, size=256, seconds=0.05)
    assert math.isfinite(rate) and rate > 1e6
    with pytest.raises(ValueError, match="seconds > 0"):
        measured_gemm_peak("cpu", torch.float32, size=256, seconds=0)


def test_unet_throughput_uses_the_counted_flops():
    runner = UNetRunner("tiny", 1, "cpu", torch.float32)
    flops = unet_flops_per_image("tiny")
    rate = unet_throughput("tiny", 1, "cpu", torch.float32, 1, runner, flops)
    assert math.isfinite(rate) and rate > 0
    with pytest.raises(ValueError, match="steps must be >= 1"):
        unet_throughput("tiny", 1, "cpu", torch.float32, 0, runner, flops)


def test_median_ratio_is_the_median_of_per_repeat_ratios():
    # per-repeat ratios 1, 5, 1 → 1; the ratio of the medians would be 3 / 2.
    assert median_ratio([1.0, 10.0, 3.0], [1.0, 2.0, 3.0]) == 1.0
    assert median_ratio([3.0, 1.0], [1.0, 1.0]) == 2.0
    with pytest.raises(ValueError):
        median_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        median_ratio([], [])


def test_threads_follow_rays_omp_rule():
    assert [actor_threads(c) for c in (0.25, 0.5, 1.0, 2.7)] == [1, 1, 1, 2]
    assert replica_threads(0.25) == 1


def test_bare_loop_batches_are_the_jobs_micro_batches():
    n, k, per_call = 7, 3, 8
    table = SeedTable(url="memory://seeds.parquet", sha256="0" * 64,
                      seed_ids=np.arange(100, 100 + n, dtype=np.int64),
                      embeddings=random_identities(n, 16), sources=["random"] * n)
    gen_cfg = GenerateConfig(seeds="s", generator="g", recognizer="r", samples_per_identity=k,
                             identities_per_shard=5, images_per_call=per_call)
    calls = micro_batches(gen_cfg, table)
    # 8 // 3 = 2 identities per chunk; shards of 5 and 2 identities → chunks 2, 2, 1 | 2.
    assert [len(c["seeds"]) for c in calls] == [6, 6, 3, 6]
    seeds = [s for c in calls for s in c["seeds"]]
    expected = image_seeds(0, np.repeat(table.seed_ids, k), np.tile(np.arange(k), n))
    assert seeds == expected.tolist()
    ids = np.concatenate([c["ids"] for c in calls])
    assert np.array_equal(ids, np.repeat(table.embeddings, k, axis=0))


def test_memory_monitor_reads_resident_memory():
    monitor = MemoryMonitor(0.1)
    monitor.poll_rss()
    figures = monitor.as_dict()
    assert figures["peak_rss_process_tree_mb"] >= figures["peak_rss_largest_process_mb"] > 10


def test_configs_refuse_unknown_presets_and_keys():
    cfg = load_config(BenchUNetConfig, overrides=["presets=[tiny]", "batch={tiny: 2}"])
    assert cfg.presets == ["tiny"] and cfg.batch == {"tiny": 2}
    with pytest.raises(ConfigError, match="presets"):
        load_config(BenchUNetConfig, overrides=["presets=[huge]"])
    with pytest.raises(ConfigError, match="client"):
        load_config(BenchServeConfig, overrides=["client=4"])
