"""The pipeline's steady rate from completion records: each record's images spread over its
task's interval, so a few coarse records give the rate the tasks really had."""

import pytest

from cemiray.pipeline.generate.throughput import finished_by, passing_time, steady_rate


def two_workers(records_each: int, images: int = 1000, seconds: float = 2.0):
    """Two tasks at a time, back to back: each writes `images` in `seconds`."""
    return [(k * seconds, (k + 1) * seconds, images) for k in range(records_each)
            for _ in range(2)]


def test_coarse_records_give_the_tasks_own_rate():
    intervals = two_workers(5)  # 10 records, landing in pairs: the 10K case of bench-pipeline
    assert steady_rate(intervals) == pytest.approx(1000.0)  # 2 tasks × 1000 images / 2 s
    staggered = [(s + 1.0 * (i % 2), e + 1.0 * (i % 2), n) for i, (s, e, n) in enumerate(intervals)]
    assert steady_rate(staggered) == pytest.approx(1000.0)
    assert steady_rate(two_workers(100)) == pytest.approx(1000.0)


def test_start_up_and_tail_stay_outside_the_window():
    # a slow first record and a slow last one (10% of the images each) do not move the rate
    steady = [(10.0 + k, 11.0 + k, 100) for k in range(8)]
    intervals = [(0.0, 10.0, 100), *steady, (18.0, 40.0, 100)]
    assert steady_rate(intervals) == pytest.approx(100.0)
    assert finished_by(intervals, 10.0) == 100 and finished_by(intervals, 10.5) == 150
    assert passing_time(intervals, 100) == pytest.approx(10.0)


def test_nothing_to_measure_is_none():
    assert steady_rate([]) is None
    assert steady_rate([(5.0, 5.0, 10)]) is None  # one instant: no time between 10% and 90%
    assert steady_rate([(0.0, 1.0, 0)]) is None


def test_the_sweep_follows_the_definition_at_every_breakpoint():
    import random

    from cemiray.pipeline.generate.throughput import _curve

    rng = random.Random(0)
    intervals = [(s, s + rng.choice([0.0, rng.random() * 3]), rng.randint(1, 50))
                 for s in (rng.random() * 10 for _ in range(200))]
    for t, n, _ in _curve(intervals):
        assert n == pytest.approx(finished_by(intervals, t))
    total = sum(n for _, _, n in intervals)
    for q in (0.1, 0.5, 0.9):
        assert finished_by(intervals, passing_time(intervals, q * total)) >= q * total - 1e-6
