"""The pipeline's steady rate from its completion records, however coarse they are.

Each record says when its task started and finished and how many images it wrote; its images are
spread evenly over that interval, so the images finished by time t form a continuous curve that
overlapping tasks add to. The steady rate is the curve's slope between the moments it passes 10%
and 90% of the images. Counting whole records between the ones that pass 10% and 90% is as good
while the tasks keep a steady pace, but with 10 records it rests on two arrival times, and the
record that passes 10% may carry images made during the start-up."""

from __future__ import annotations

from collections.abc import Sequence


def finished_by(intervals: Sequence[tuple[float, float, int]], t: float) -> float:
    """Images finished by time `t`, each record's spread evenly over its (start, end)."""
    total = 0.0
    for start, end, images in intervals:
        if t >= end:
            total += images
        elif t > start:
            total += images * (t - start) / (end - start)
    return total


def passing_time(intervals: Sequence[tuple[float, float, int]], count: float) -> float:
    """The first moment the curve reaches `count` images (linear between the breakpoints)."""
    times = sorted({t for start, end, _ in intervals for t in (start, end)})
    before_t, before_n = times[0], 0.0
    for t in times:
        n = finished_by(intervals, t)
        if n >= count:
            if n == before_n:
                return t
            return before_t + (t - before_t) * (count - before_n) / (n - before_n)
        before_t, before_n = t, n
    return times[-1]


def steady_rate(intervals: Sequence[tuple[float, float, int]], low: float = 0.1,
                high: float = 0.9) -> float | None:
    """Images per second between the moments `low` and `high` of all images were finished;
    None without images or without time between the two moments."""
    intervals = [(float(s), float(max(e, s)), int(n)) for s, e, n in intervals if n > 0]
    total = sum(n for _, _, n in intervals)
    if not total:
        return None
    t_low, t_high = (passing_time(intervals, q * total) for q in (low, high))
    return (high - low) * total / (t_high - t_low) if t_high > t_low else None
