"""Progress a person can follow (runtime): one line per interval, from a job's own counts.

Ray Train workers write their progress to `OUT/metrics.jsonl` (rank 0, JSON lines); their own
stdout does not reach the driver. `follow_metrics` reads that file in a background thread of the
driver and prints one line every `every_s` seconds: the step out of the total, images/s, the loss
and an ETA, or, before the first step, what the run is waiting for. `ticker` with `count_line`
does the same for jobs that count in the driver (images generated, shards written).
`since_launch` is the wall time a user has waited, start-up included.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from cemiray.data import storage


def since_launch() -> float:
    """Seconds since this process started (imports and Ray's start-up included)."""
    import psutil

    return max(0.0, time.time() - psutil.Process().create_time())


def read_records(url: str) -> list[dict]:
    """The metrics file's records; a missing or half-visible file reads as none so far."""
    try:
        text = storage.read_text(url)
    except (FileNotFoundError, OSError):
        return []
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records


def minutes(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def progress_line(job: str, records: list[dict], waited: float) -> str:
    """One line: where the run is (from its records, this run's only) and how long it has run."""
    starts = [i for i, r in enumerate(records) if r.get("event") == "start"]
    start = records[starts[-1]] if starts else None
    train = [r for r in records[starts[-1] if starts else 0:] if r.get("event") == "train"]
    if not train:
        if start is None:
            return f"{job}: starting workers ({minutes(waited)}; the first run on a machine " \
                   "also loads Ray Train and DeepSpeed)"
        return f"{job}: workers started, waiting for the first step ({minutes(waited)})"
    last = train[-1]
    total = (start or {}).get("total_steps")
    step = last.get("step", 0)
    text = f"{job}: step {step}" + (f"/{total} ({100 * step / total:.0f}%)" if total else "")
    if "img_per_s" in last:
        text += f", {last['img_per_s']:.1f} img/s"
    loss = last.get("loss", last.get("loss_total"))
    if isinstance(loss, (int, float)):
        text += f", loss {loss:.4g}"
    if total and len(train) >= 2 and step < total:
        first = next((r for r in train if r.get("step", 0) > (start or {}).get("step", 0)),
                     train[0])
        rate = (last["step"] - first["step"]) / max(last["time"] - first["time"], 1e-9)
        if rate > 0:
            text += f", ETA {minutes((total - step) / rate)}"
    return text + f" [{minutes(waited)}]"


@contextmanager
def ticker(line: Callable[[float], str], every_s: float = 15.0, enabled: bool = True
           ) -> Iterator[None]:
    """Print `line(seconds so far)` every `every_s` seconds while the block runs."""
    if not enabled or every_s <= 0:
        yield
        return
    stop, begun = threading.Event(), time.monotonic()

    def loop() -> None:
        while not stop.wait(every_s):
            print(line(time.monotonic() - begun), flush=True)

    thread = threading.Thread(target=loop, name="cemiray-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


@contextmanager
def follow_metrics(job: str, url: str, every_s: float = 15.0, enabled: bool = True
                   ) -> Iterator[None]:
    """Print `progress_line` of the metrics file at `url` every `every_s` seconds."""
    earlier = len(read_records(url)) if enabled else 0  # a resumed run's file has more
    with ticker(lambda waited: progress_line(job, read_records(url)[earlier:], waited), every_s,
                enabled):
        yield


def count_line(job: str, done: int, total: int, unit: str, waited: float, extra: str = "") -> str:
    """`job: 120/500 images (24%), 3.1 images/s, ETA 2 min 03 s [40 s]`."""
    text = f"{job}: {done}/{total} {unit}" + (f" ({100 * done / total:.0f}%)" if total else "")
    if done and waited > 0:
        rate = done / waited
        text += f", {rate:.1f} {unit}/s"
        if total > done:
            text += f", ETA {minutes((total - done) / rate)}"
    return text + (f", {extra}" if extra else "") + f" [{minutes(waited)}]"
