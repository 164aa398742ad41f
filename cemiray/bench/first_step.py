"""`python jobs/bench_first_step.py`: seconds from `cemiray train-fr` to its first step (bench).

A newcomer's first training run on a fresh machine: the command is launched as a subprocess with
an empty torch-extensions folder (TORCH_EXTENSIONS_DIR, where DeepSpeed caches the C++ extensions
it compiles), and the wall time from launch to the first optimizer step (the step-1 record of
`OUT/metrics.jsonl`) is taken, once with DeepSpeed's shared-memory all-reduce
(`distributed.cpu_shm_comm=true`, which compiles an extension on first use) and once with the
default (torch's gloo all-reduce, nothing to compile). Other caches (Python bytecode, the OS's
file cache) are warm in both, so the difference is the compile.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cemiray.data import storage

ARGS = ["data=toyfaces:?seed=0&ids=0-19&samples=8&size=32", "width=8", "max_steps=3",
        "batch_size=16", "log_every=1", "distributed.num_workers=1",
        "distributed.cpus_per_worker=1"]


def first_step_seconds(out: Path, shm_comm: bool, timeout_s: float) -> dict:
    """Launch train-fr with an empty extensions folder; seconds to its step-1 record."""
    with tempfile.TemporaryDirectory(prefix="cemiray-fresh-ext-") as ext:
        env = {**os.environ, "TORCH_EXTENSIONS_DIR": ext}
        command = [sys.executable, "-m", "cemiray.cli", "train-fr", f"out={out}", *ARGS,
                   f"distributed.cpu_shm_comm={str(shm_comm).lower()}"]
        launched = time.time()
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False,
                              timeout=timeout_s)
        total = time.time() - launched
        if done.returncode != 0:
            raise RuntimeError(f"train-fr failed:\n{done.stderr[-2000:]}")
        compiled = any(Path(ext).rglob("*.so"))
    records = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if ln]
    first = next(r for r in records if r.get("event") == "train" and r.get("step") == 1)
    return {"cpu_shm_comm": shm_comm, "seconds_to_first_step": round(first["time"] - launched, 1),
            "seconds_total": round(total, 1), "compiled_an_extension": compiled}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/bench_first_step")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--results", default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    from cemiray.runtime.machine import machine_info

    root = Path(args.out).resolve()
    rows = []
    for shm_comm in (True, False):
        out = root / ("shm_comm" if shm_comm else "gloo")
        if out.exists():
            import shutil

            shutil.rmtree(out)
        rows.append(first_step_seconds(out, shm_comm, args.timeout))
        print(f"bench-first-step: cpu_shm_comm={shm_comm}: first step after "
              f"{rows[-1]['seconds_to_first_step']} s (compiled: "
              f"{rows[-1]['compiled_an_extension']})", flush=True)
    text = json.dumps({"benchmark": "first_step", "machine": machine_info(),
                       "command": "cemiray train-fr " + " ".join(ARGS), "runs": rows},
                      indent=2, sort_keys=True, default=str) + "\n"
    storage.atomic_write_text(str(root / "first_step.json"), text)
    if args.results:
        storage.atomic_write_text(args.results, text)
    return 0
