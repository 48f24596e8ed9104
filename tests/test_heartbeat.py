"""Heartbeat, silence timeout and backoff, driven by task.Clock."""

from __future__ import annotations

from twisted.internet import task
from twisted.internet.testing import StringTransport

from aurora import _broker
from aurora.client import retryPolicy


class AbortableTransport(StringTransport):
    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True


def connectedBroker(clock):
    factory = _broker.ClientFactory(lambda *a: None, callTimeout=None, clock=clock)
    broker = factory.buildProtocol(None)
    transport = AbortableTransport()
    broker.makeConnection(transport)
    return broker, transport


def test_pingsEveryIntervalAndAbortsAfterSilence():
    clock = task.Clock()
    broker, transport = connectedBroker(clock)
    pings = []
    broker.watch(timeout=10, interval=5, ping=lambda: pings.append(clock.seconds()))
    clock.advance(5)
    assert pings == [5]
    clock.advance(4.9)
    assert not transport.aborted
    clock.advance(0.1)  # ten seconds without a byte
    assert transport.aborted
    assert pings == [5]


def test_anythingReceivedKeepsTheConnectionAlive():
    clock = task.Clock()
    broker, transport = connectedBroker(clock)
    pings = []
    broker.watch(timeout=10, interval=5, ping=lambda: pings.append(clock.seconds()))
    for _ in range(6):
        clock.advance(5)
        broker.dataReceived(b"")  # the answer to the ping
    assert not transport.aborted
    assert pings == [5, 10, 15, 20, 25, 30]
    clock.advance(10)
    assert transport.aborted


def test_serverSideWatchesWithoutPinging():
    clock = task.Clock()
    broker, transport = connectedBroker(clock)
    broker.watch(timeout=3)
    clock.advance(2)
    broker.dataReceived(b"")
    clock.advance(2.9)
    assert not transport.aborted
    clock.advance(0.1)
    assert transport.aborted


def test_watchStopsWithTheConnection():
    clock = task.Clock()
    broker, transport = connectedBroker(clock)
    broker.watch(timeout=3, interval=1, ping=lambda: None)
    broker.connectionLost(Exception("gone"))
    assert clock.getDelayedCalls() == []


def test_backoffFirstRetryFastThenCapped():
    policy = retryPolicy(0.25, 30.0)
    for _ in range(100):
        # ClientService numbers the first retry 1: within 2 x the delay.
        assert 0.25 <= policy(1) <= 0.5
        assert policy(4) > policy(1)
        assert 30.0 <= policy(1000) <= 30.25
