"""Token buckets: bursts, refill, and the wait they report."""

from __future__ import annotations

from services.limits.quotas import TokenBuckets


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_one_token_every_sixty_over_n_seconds() -> None:
    clock = Clock()
    buckets = TokenBuckets(6, clock)  # six a minute: one every 10 s
    assert [buckets.take("alice") for _ in range(6)] == [None] * 6
    assert buckets.take("alice") == 10.0
    assert buckets.take("bob") is None  # keys are independent
    clock.now += 5
    assert buckets.take("alice") == 5.0
    clock.now += 5
    assert buckets.take("alice") is None
    assert buckets.take("alice") == 10.0


def test_an_idle_key_refills_to_a_full_burst_and_no_more() -> None:
    clock = Clock()
    buckets = TokenBuckets(3, clock)
    for _ in range(3):
        buckets.take("alice")
    clock.now += 3600
    assert [buckets.take("alice") for _ in range(4)] == [None, None, None, 20.0]
