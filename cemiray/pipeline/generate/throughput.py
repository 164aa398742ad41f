"""The pipeline's steady rate from its completion records, however coarse they are.

Each record says when its task started and finished and how many images it wrote; its images are
spread evenly over that interval, so the images finished by time t form a continuous curve that
overlapping tasks add to. The steady rate is the curve's slope between the moments it passes 10%
and 90% of the images. Counting whole records between the ones that pass 10% and 90% is as good
while the tasks keep a steady pace, but with 10 records it rests on two arrival times, and the
record that passes 10% may carry images made during the start-up."""

from __future__ import annotations

from collections.abc import Sequence


def _curve(intervals: Sequence[tuple[float, float, int]]) -> list[tuple[float, float, float]]:
    """The curve as (time, images finished by then, slope after it) at each breakpoint, from one
    sweep over the sorted starts and ends: O(R log R) for R records."""
    jumps: dict[float, float] = {}   # images landing at an instant (zero-length intervals)
    slopes: dict[float, float] = {}  # change of slope at a breakpoint
    for start, end, images in intervals:
        if end > start:
            rate = images / (end - start)
            slopes[start] = slopes.get(start, 0.0) + rate
            slopes[end] = slopes.get(end, 0.0) - rate
        else:
            jumps[end] = jumps.get(end, 0.0) + images
    points, finished, slope, last = [], 0.0, 0.0, None
    for t in sorted(set(jumps) | set(slopes)):
        if last is not None:
            finished += slope * (t - last)
        finished += jumps.get(t, 0.0)
        slope += slopes.get(t, 0.0)
        points.append((t, finished, slope))
        last = t
    return points


def finished_by(intervals: Sequence[tuple[float, float, int]], t: float) -> float:
    """Images finished by time `t`, each record's spread evenly over its (start, end): the
    curve's definition, one pass over the records (`_curve` sweeps all breakpoints at once)."""
    total = 0.0
    for start, end, images in intervals:
        if t >= end:
            total += images
        elif t > start:
            total += images * (t - start) / (end - start)
    return total


def passing_time(intervals: Sequence[tuple[float, float, int]], count: float) -> float:
    """The first moment the curve reaches `count` images (linear between the breakpoints)."""
    return _passing(_curve(intervals), count)


def _passing(points: list[tuple[float, float, float]], count: float) -> float:
    """`passing_time` on a curve already swept (`_curve`)."""
    before_t, before_n, before_slope = points[0][0], 0.0, 0.0
    for t, n, slope in points:
        if n >= count:
            if before_slope > 0 and before_n + before_slope * (t - before_t) >= count:
                return before_t + (count - before_n) / before_slope  # on the way up to t
            return t  # reached by images landing at t
        before_t, before_n, before_slope = t, n, slope
    return points[-1][0]


def steady_rate(intervals: Sequence[tuple[float, float, int]], low: float = 0.1,
                high: float = 0.9) -> float | None:
    """Images per second between the moments `low` and `high` of all images were finished;
    None without images or without time between the two moments."""
    intervals = [(float(s), float(max(e, s)), int(n)) for s, e, n in intervals if n > 0]
    total = sum(n for _, _, n in intervals)
    if not total:
        return None
    points = _curve(intervals)  # one sweep serves both moments
    t_low, t_high = (_passing(points, q * total) for q in (low, high))
    return (high - low) * total / (t_high - t_low) if t_high > t_low else None
