"""
Write batching (aurora._cork): what the brokers of one reactor write while it
handles input goes out in one send per connection, when the handling is done.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer, task
from zope.interface import implementer

from aurora import Client, Registry, Server
from aurora._broker import Broker
from aurora._cork import Cork
from aurora._seams import ICorked
from tests.app import IUserManager, UserManager
from tests.test_wire import RawClient


@implementer(ICorked)
class Sink:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendHeld(self, data: bytes) -> None:
        self.sent.append(data)


def test_holdsUntilFlushedThenSendsOncePerConnection():
    cork, a, b = Cork(), Sink(), Sink()
    assert cork.take(a, b"now") == b"now"  # not holding: the caller sends it
    assert cork.hold() is True
    assert cork.hold() is False  # inner input joins the outer batch
    for data in (b"1", b"2", b"3"):
        assert cork.take(a, data) is None
    assert cork.take(b, b"x") is None
    cork.flush()
    assert (a.sent, b.sent) == ([b"123"], [b"x"])
    assert cork.take(a, b"after") == b"after"  # flushed: not holding any more


def test_aBurstOverTheLimitGoesAtOnceAndARefusedPeerGetsNothing():
    cork, a, b = Cork(), Sink(), Sink()
    cork.hold()
    half = b"h" * (Cork.LIMIT // 2)
    assert cork.take(a, half) is None
    assert cork.take(a, half) is None  # at the limit, not over it
    assert cork.take(a, b"!") == half + half + b"!"  # over: all of it, now
    assert cork.take(a, b"later") is None  # and holding again from there
    cork.take(b, b"answer")
    cork.discard(b)
    cork.flush()
    assert (a.sent, b.sent) == ([b"later"], [])


def test_oneCorkPerReactorSharedByItsEndpoints():
    """
    A relay's upstream input makes its downstream writes: the Client and
    the Server of one reactor batch together; another reactor's do not.
    """
    clock, other = task.Clock(), task.Clock()
    server = Server(Registry(), reactor=clock)
    client = Client("tcp:127.0.0.1:1", reactor=clock)
    assert server.factory.cork is client.factory.cork is Cork.forReactor(clock)
    assert Cork.forReactor(other) is not server.factory.cork


@pytest_twisted.ensureDeferred
async def test_pipelinedCallsAreAnsweredInOneSend(monkeypatch):
    registry = Registry()
    registry.register(IUserManager, UserManager())
    server = Server(registry)
    port = (await server.listen("tcp:0:interface=127.0.0.1")).getHost().port
    raw = RawClient()
    await raw.connect(port)
    try:
        [broker] = list(server._brokers)
        sends: list[bytes] = []
        send = Broker._send

        def counting(self, data):
            if self is broker:
                sends.append(data)
            send(self, data)

        monkeypatch.setattr(Broker, "_send", counting)
        calls = 20
        # Written in one turn of the reactor: they arrive together.
        answers = [raw.send(b"ping", [b"tuple"]) for _ in range(calls)]
        assert await defer.gatherResults(answers) == [None] * calls
        assert 1 <= len(sends) < calls // 2
    finally:
        await raw.close()
        await server.stop()
