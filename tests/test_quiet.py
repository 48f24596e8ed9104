"""aurora._quiet.LogLimiter: what bounds the log lines a peer can cause."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent


def limiter(**kw):
    from aurora._quiet import LogLimiter

    events: list[dict] = []
    log = Logger(observer=events.append)
    return LogLimiter(log, clock := Clock(), **kw), clock, events


def test_oneLinePerKeyPerIntervalAndTheRestCounted():
    quiet, clock, events = limiter(interval=60)
    for _ in range(100):
        quiet.warn("a", "bad input from {peer}", peer="p")
    quiet.warn("b", "another kind")
    assert [formatEvent(e) for e in events] == ["bad input from p", "another kind"]
    clock.advance(60)
    quiet.warn("a", "bad input from {peer}", peer="p")
    assert formatEvent(events[-1]) == "bad input from p (and 99 more like it)"


def test_itsOwnMemoryIsBounded():
    """Past maxKeys, new keys share one line per interval: no table grows unbounded."""
    quiet, clock, events = limiter(interval=60, maxKeys=10)
    for i in range(10_000):
        quiet.warn(("peer", i), "from {i}", i=i)
    assert len(quiet._keys) <= 11
    assert len(events) == 11  # ten keys, then one line for all the rest
    clock.advance(60)
    quiet.warn(("peer", 10_001), "from {i}", i=10_001)
    assert len(quiet._keys) <= 11  # quiet keys are pruned to make room
