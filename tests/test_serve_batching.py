"""The serve deployments' dynamic batcher, without Ray: requests that arrive while the model is
busy form the next batch (up to its cap), a lone request on an idle model is served alone, results
go back to their callers in order, and a failing batch fails each of its callers."""

from __future__ import annotations

import asyncio
import time

import pytest

from cemiray.serve.batching import DynamicBatcher


def run_model(calls: list[list[int]], seconds: float = 0.05):
    def run(items: list[int]) -> list[int]:
        calls.append(list(items))
        time.sleep(seconds)
        return [x * 10 for x in items]

    return run


def test_requests_arriving_while_busy_form_the_next_batch():
    calls: list[list[int]] = []

    async def main() -> list[int]:
        batcher = DynamicBatcher(run_model(calls), max_batch_size=8, wait_s=0.0)
        first = asyncio.ensure_future(batcher.submit(0))
        await asyncio.sleep(0.01)  # the model is now busy with [0]
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in range(1, 21)]
        return [await first] + list(await asyncio.gather(*rest))

    results = asyncio.run(main())
    assert results == [i * 10 for i in range(21)]
    assert calls[0] == [0] and [len(c) for c in calls[1:]] == [8, 8, 4]
    assert sorted(x for c in calls for x in c) == list(range(21))


def test_an_idle_model_waits_briefly_for_companions():
    calls: list[list[int]] = []

    async def main() -> None:
        batcher = DynamicBatcher(run_model(calls, 0.0), max_batch_size=8, wait_s=0.2)
        await asyncio.gather(batcher.submit(1), batcher.submit(2), batcher.submit(3))
        assert batcher.stats.as_dict() == {"batches": 1, "items": 3, "largest_batch": 3}

    asyncio.run(main())
    assert calls == [[1, 2, 3]]


def test_a_failing_batch_fails_every_caller_and_the_batcher_goes_on():
    async def main() -> None:
        def run(items: list[int]) -> list[int]:
            if 13 in items:
                raise ValueError("bad item")
            return items

        batcher = DynamicBatcher(run, max_batch_size=4, wait_s=0.05)
        results = await asyncio.gather(batcher.submit(13), batcher.submit(1),
                                       return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in results), results
        assert await batcher.submit(2) == 2

    asyncio.run(main())


def test_a_model_returning_the_wrong_count_is_an_error():
    async def main() -> None:
        batcher = DynamicBatcher(lambda items: items[:-1], max_batch_size=4, wait_s=0.05)
        with pytest.raises(RuntimeError, match="batch of 2 gave 1 results"):
            await asyncio.gather(batcher.submit(1), batcher.submit(2))

    asyncio.run(main())
