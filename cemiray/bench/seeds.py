"""`jobs/bench_seeds.py`: the greedy uniqueness filter at scale, on seeds with planted duplicates.

N random unit seeds in D dimensions plus planted near-duplicates, filtered at τ (CemiFace: 0.3)
blockwise. Reports the time, the peak resident memory the filter added and the number kept
(every planted duplicate must go, every original must stay: random 512-d unit vectors have
cosines ~ N(0, 1/512), far below 0.3).

    python jobs/bench_seeds.py [--n 100000] [--dim 512] [--duplicates 0.05] [--out runs/bench]

Writes OUT/bench_seeds.json and prints one line.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np


def planted_seeds(n: int, dim: int, duplicates: float, noise: float, seed: int):
    """float32 unit rows: n originals (generated in chunks, never a float64 copy) and
    round(n·duplicates) noisy copies of random originals, each placed after its original.
    Returns (rows, is_duplicate)."""
    rng = np.random.default_rng(seed)
    n_dup = round(n * duplicates)
    total = n + n_dup
    x = np.empty((total, dim), dtype=np.float32)
    for start in range(0, n, 8192):
        stop = min(start + 8192, n)
        x[start:stop] = rng.standard_normal((stop - start, dim), dtype=np.float32)
    originals = rng.choice(n, size=n_dup, replace=False)
    x[n:] = x[originals] / np.linalg.norm(x[originals], axis=1, keepdims=True)
    x[n:] += noise * rng.standard_normal((n_dup, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    # Interleave: each duplicate lands at a random place after its original.
    key = np.concatenate([np.arange(n, dtype=np.float64),
                          originals + rng.uniform(0.5, n - originals + 0.5)])
    order = np.argsort(key, kind="stable")
    is_dup = np.zeros(total, dtype=bool)
    is_dup[n:] = True
    return x[order], is_dup[order]


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-set high-water mark (Linux ≥ 4.0), so VmHWM then measures
    the filter alone."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="random seeds")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--duplicates", type=float, default=0.05, help="planted, as a fraction")
    parser.add_argument("--noise", type=float, default=0.02, help="std of the planted copies")
    parser.add_argument("--threshold", type=float, default=0.3)
    parser.add_argument("--block", type=int, default=1024)
    parser.add_argument("--chunk", type=int, default=8192)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench_seeds")
    args = parser.parse_args(argv)

    import torch

    from cemiray.bench.common import write_result
    from cemiray.eval.seed_filters import DUPLICATE, greedy_select

    x, is_dup = planted_seeds(args.n, args.dim, args.duplicates, args.noise, args.seed)
    greedy_select(x[:2048], args.threshold, block=args.block, device=args.device)  # warm-up
    baseline = rss_mb("VmRSS")
    exact_peak = reset_peak_rss()
    t0 = time.perf_counter()
    sel = greedy_select(x, args.threshold, block=args.block, chunk=args.chunk,
                        device=args.device)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = rss_mb("VmHWM")
    kept = sel.outcome == 0
    figures = {
        "seeds": len(x),
        "planted_duplicates": int(is_dup.sum()),
        "kept": int(kept.sum()),
        "duplicates_removed": int((sel.outcome == DUPLICATE).sum()),
        "planted_removed": int((~kept & is_dup).sum()),
        "originals_kept": int((kept & ~is_dup).sum()),
        "seconds": round(seconds, 2),
        "seeds_per_s": round(len(x) / seconds, 1),
        "gflop": round(float(kept.sum()) * len(x) * args.dim / 1e9, 1),
        "input_mb": round(x.nbytes / 2**20, 1),
        "rss_before_mb": round(baseline, 1),
        "peak_rss_mb": round(peak, 1),
        "filter_extra_peak_mb": round(peak - baseline, 1),
        "peak_is_exact": exact_peak,
        "torch_threads": torch.get_num_threads(),
    }
    url = write_result(args.out, "bench_seeds", vars(args), figures)
    print(f"bench_seeds: {figures['seeds']} seeds × {args.dim}-d at τ={args.threshold}: kept "
          f"{figures['kept']} (planted {figures['planted_duplicates']}, removed "
          f"{figures['planted_removed']}) in {figures['seconds']} s, filter peak +"
          f"{figures['filter_extra_peak_mb']} MB RSS → {url}", flush=True)
    return figures
