"""Benchmarks (bench): every benchmark's code; `jobs/` holds their thin entry points.

Every benchmark's code: each figure is a ratio or a rate measured within one run, written as
JSON with the machine it ran on (`common.py`); `jobs/` holds thin entry points.

- `bench-unet` (unet_flops): UNet FLOP/s ÷ measured GEMM FLOP/s per preset;
- `bench-generate` (generate): Ray Data `generate` img/s ÷ a bare sampler loop;
- `bench-serve` (serve): HTTP embedding img/s ÷ in-process batched img/s;
- `bench-fr` (fr): Ray Train + DeepSpeed ÷ a plain loop, ToyFaces calibration, ORL scores;
- `jobs/bench_render.py` (render), `jobs/bench_seeds.py` (seeds), `jobs/bench_generator.py`
  (generator): ToyFaces rendering speed, seed filtering at scale, the generator's control;
- `jobs/bench_judge.py` (judge): the shipped judge and E_id on the same held-out pairs.
"""
