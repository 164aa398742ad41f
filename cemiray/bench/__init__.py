"""Performance benchmarks: each one a job whose figures are ratios measured within one run
(alternating repeats, median of the per-repeat ratios), never absolute times held against a
constant, so they mean the same on a loaded laptop and on a cluster node.

- `bench-unet` (cemiray.bench.unet_flops): UNet FLOP/s ÷ measured GEMM FLOP/s per preset;
- `bench-generate` (cemiray.bench.generate): Ray Data `generate` img/s ÷ a bare sampler loop;
- `bench-serve` (cemiray.bench.serve): HTTP embedding img/s ÷ in-process batched img/s.
"""
