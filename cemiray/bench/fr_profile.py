"""Where a training step's time goes, in the Ray Train worker and in the plain loop (bench).

`cemiray bench-fr profile_seconds=8` samples, with py-spy (a sampling profiler that attaches to
a running process; a dev dependency), the training thread of the Ray Train worker and the plain
loop's thread while they run, idle samples included, and sorts every sample by the first frame
it passes through that names a known part of a step: the data iterator's wait, decoding,
augmentation, DeepSpeed's ZeRO bookkeeping, the optimizer, forward, backward. The shares tell
what is the project's (the loop, the data path's settings) and what is Ray's or DeepSpeed's.
"""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Self

import psutil

# (part, substring of a frame), first match from the leaf up wins
PARTS = (
    ("data wait", "Queue.get"),
    ("zero", "DeepSpeedZeroOptimizer"),
    ("decode", "decode_batch"),
    ("augment", "augment"),
    ("backward", "backward"),
    ("optimizer", "step"),
    ("forward", "forward"),
)


def classify(frames: list[str]) -> str:
    for frame in reversed(frames):
        for part, pattern in PARTS:
            if pattern in frame:
                return part
    return "other"


def shares(raw: str, thread: str | None) -> dict[str, float]:
    """Share of each part in the samples of the thread whose name contains `thread` (None: the
    busiest thread), from py-spy's raw (collapsed) output."""
    per_thread: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for line in raw.splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        frames = stack.split(";")
        per_thread[frames[0]][classify(frames[1:])] += int(count)
    if not per_thread:
        return {}
    names = [t for t in per_thread if thread and thread in t] or [
        max(per_thread, key=lambda t: sum(per_thread[t].values()))]
    counts = per_thread[names[0]]
    total = sum(counts.values())
    return {"samples": total, **{part: round(n / total, 4) for part, n in counts.most_common()}}


class Sampler:
    """Waits (in a thread) for a process whose command line starts with `title` to keep more
    than one core busy for 2 s (its steps have begun), then records it for `seconds` with
    py-spy."""

    def __init__(self, title: str, seconds: float, out: Path, thread: str | None,
                 warmup_s: float = 1.0, timeout_s: float = 600.0) -> None:
        self.title, self.seconds, self.out, self.thread = title, seconds, out, thread
        self.warmup_s, self.timeout_s = warmup_s, timeout_s
        self.error: str | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(timeout=self.timeout_s)

    def _find(self) -> int | None:
        for proc in psutil.process_iter(["cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            if cmd.startswith(self.title):
                return proc.pid
        return None

    def _run(self) -> None:
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        t0 = time.monotonic()
        pid = None
        while pid is None and time.monotonic() - t0 < self.timeout_s:
            pid = self._find()
            time.sleep(0.2)
        if pid is None:
            self.error = f"no process {self.title!r} appeared"
            return
        busy = 0  # training has begun when the process keeps more than one core busy
        try:
            proc = psutil.Process(pid)
            while busy < 2 and time.monotonic() - t0 < self.timeout_s:
                busy = busy + 1 if proc.cpu_percent(interval=1.0) > 120 else 0
        except psutil.NoSuchProcess:
            self.error = f"{self.title!r} ended before it was sampled"
            return
        time.sleep(self.warmup_s)
        try:
            done = subprocess.run([spy, "record", "-p", str(pid), "-d", str(int(self.seconds)),
                                   "-r", "100", "--nonblocking", "--idle", "--threads",
                                   "--format", "raw", "-o", str(self.out)],
                                  check=False, capture_output=True, text=True,
                                  timeout=self.seconds + 60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.error = f"py-spy: {exc}"
            return
        if done.returncode or not self.out.exists():
            self.error = (done.stderr or done.stdout)[-300:]

    def result(self) -> dict:
        if self.error:
            return {"error": self.error}
        return shares(self.out.read_text(), self.thread)
