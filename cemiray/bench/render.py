"""`jobs/bench_render.py`: ToyFaces rendering throughput (images per second, one process) per size.

    python jobs/bench_render.py --sizes 16 32 64 112 --batch 64 --seconds 2 --out bench.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

from cemiray.data import storage
from cemiray.data.toyfaces import ToyFacesWorld
from cemiray.data.toyfaces.priors import _check_index

# Throughput the issue asks for on one core: {size: images per second}.
TARGETS = {32: 1000.0, 112: 100.0}


def benchmark_render(
    sizes: Sequence[int] = (16, 32, 64, 112),
    batch: int = 64,
    seconds: float = 2.0,
    world_seed: int = 0,
) -> dict[int, float]:
    """Images per second of `render_batch` per size, on fresh identities (no cache hits)."""
    batch = _check_index("batch", batch)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    rates: dict[int, float] = {}
    for size in sizes:
        world = ToyFacesWorld(seed=world_seed, size=size)
        next_id = 10_000_000
        world.render_batch(range(next_id, next_id + batch), [0] * batch)
        next_id += batch
        done, start = 0, time.perf_counter()
        while True:
            world.render_batch(range(next_id, next_id + batch), [0] * batch)
            next_id += batch
            done += batch
            elapsed = time.perf_counter() - start
            if elapsed >= seconds:
                break
        rates[int(size)] = done / elapsed
    return rates


def main(argv: list[str] | None = None) -> dict[int, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64, 112])
    parser.add_argument("--batch", type=int, default=64, help="images per render_batch call")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per size")
    parser.add_argument("--world-seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="optional JSON URL for the results")
    args = parser.parse_args(argv)

    rates = benchmark_render(
        sizes=args.sizes, batch=args.batch, seconds=args.seconds, world_seed=args.world_seed
    )
    for size, rate in rates.items():
        target = TARGETS.get(size)
        note = f" (target >= {target:,.0f})" if target else ""
        print(f"size {size:>3}px: {rate:10,.0f} img/s{note}")
    missed = [s for s, t in TARGETS.items() if s in rates and rates[s] < t]
    verdict = "targets missed at " + ", ".join(f"{s}px" for s in missed) if missed else "ok"
    print(f"toyfaces render, batch {args.batch}, {args.seconds:g} s per size: {verdict}")
    if args.out:
        report = {
            "img_per_s": {str(s): r for s, r in rates.items()},
            "batch": args.batch,
            "seconds": args.seconds,
            "world_seed": args.world_seed,
        }
        storage.atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    return rates
