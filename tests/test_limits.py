"""
The limits that bound what one peer can make a server spend, each against a
real server on 127.0.0.1: message budgets before and after login, the
budget all connections share, calls in progress, bytes waiting for a peer
that does not read, idle and trickling peers, connection limits, and the
state a peer can make the server hold.  (tests/test_attacks.py measures the
same attacks against a server process.)
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import formatEvent, globalLogPublisher

from aurora import Client, Model, Registry, Server, errors
from aurora._banana import listHeader
from aurora._limits import Limits
from tests.app import IUserManager, UserManager
from tests.test_wire import RawClient, encode, refused, stillServes


class LogLines:
    """The log events of one test, by text."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self)

    def __call__(self, event: dict) -> None:
        self.events.append(event)

    def close(self) -> None:
        globalLogPublisher.removeObserver(self)

    def matching(self, text: str) -> list[dict]:
        return [e for e in self.events if text in formatEvent(e)]


def pause(seconds: float = 0.01) -> defer.Deferred:
    """
    Let the reactor run a while: for state that no event announces (how much
    a server process has read), polled in loops bounded in count.
    """
    return task.deferLater(reactor, seconds, lambda: None)


async def serve(**options) -> tuple[Server, int, UserManager]:
    manager = UserManager()
    registry = Registry()
    registry.register(IUserManager, manager)
    server = Server(registry, **options)
    port = (await server.listen("tcp:0:interface=127.0.0.1")).getHost().port
    return server, port, manager


class Raw(protocol.Protocol):
    """A TCP peer that writes what it is told and records whether it was closed."""

    def __init__(self) -> None:
        self.lost: defer.Deferred = defer.Deferred()
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)


async def rawConnection(port: int) -> Raw:
    peer = Raw()
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(
        protocol.Factory.forProtocol(lambda: peer))
    return peer


# banana's dialect choice and PB's version: what a peer sends first.
OPENING = encode(b"pb") + encode([b"version", 6])


def emptyLists(count: int) -> bytes:
    """A message of C{count} one-byte empty lists: 64 bytes of memory each, decoded."""
    chunks = []
    while count:
        n = min(count, 600_000)
        chunks.append(listHeader(n) + b"\x80" * n)
        count -= n
    return listHeader(len(chunks)) + b"".join(chunks)


@pytest_twisted.ensureDeferred
async def test_amplificationBeforeLoginClosesAtTheBudget():
    """
    15 MB of empty lists before login: refused at the budget before login
    (1,000 items), the connection closed with one warning, other clients
    untouched.
    """
    server, port, _ = await serve()
    lines = LogLines()
    bystander = RawClient()
    try:
        await bystander.connect(port)
        peer = await rawConnection(port)
        payload = OPENING + emptyLists(15_000_000)
        for i in range(0, len(payload), 1 << 20):  # bounded: 15 writes
            peer.transport.write(payload[i : i + (1 << 20)])
        await peer.lost.addTimeout(10, reactor)
        [line] = lines.matching("dropping the connection")
        assert "before logging in" in formatEvent(line)
        assert server.factory.pool.items == 0 and server.factory.pool.bytes == 0
        await stillServes(bystander)
    finally:
        lines.close()
        await bystander.close()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_itemBudgetAfterLoginAnswersAndKeepsTheConnection():
    """
    After login a call over maxMessageItems is answered with LimitExceeded,
    naming the setting, without being built; the connection stays.
    """
    server, port, _ = await serve(maxMessageItems=10_000)
    raw = RawClient()
    try:
        await raw.connect(port)
        error = await refused(raw.send(b"hello", [b"list", [b"list"] + [1] * 20_000]),
                              errors.LimitExceeded)
        assert "maxMessageItems" in str(error) and error.limit == 10_000
        await stillServes(raw)
        # A list of 100,000 small records passes the default budget.
        server2, port2, _ = await serve()
        client = Client(f"tcp:127.0.0.1:{port2}", heartbeat=None)
        try:
            users = await (await client.getRegistry()).getManager(IUserManager)
            records = [("user%d" % i, "user%d@example.org" % i, i) for i in range(100_000)]
            assert await users.echo(records) == records
        finally:
            await client.stop()
            await server2.stop()
    finally:
        await raw.close()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_tenMegabyteBlobPasses():
    server, port, _ = await serve()
    client = Client(f"tcp:127.0.0.1:{port}", heartbeat=None)
    try:
        users = await (await client.getRegistry()).getManager(IUserManager)
        blob = [b"x" * 600_000] * 17  # 10.2 MB in tokens under banana's 640 KB
        assert await users.echo(blob) == blob
    finally:
        await client.stop()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_sharedPoolRefusesWhatWouldTakeItOver():
    """
    Messages in progress on all connections share maxDecodingBytes: a
    second large message while the first is incomplete is refused with
    LimitExceeded, and its connection stays.
    """
    server, port, _ = await serve(maxDecodingBytes=1_000_000)
    first, second = RawClient(), RawClient()
    try:
        await first.connect(port)
        await second.connect(port)
        # 600 KB of a message, held incomplete on the first connection.
        first.broker.transport.write(encode([b"x" * 600_000])[:-10])
        for _ in range(500):  # bounded: until the server has read it
            if server.factory.pool.bytes >= 500_000:
                break
            await pause()
        assert server.factory.pool.bytes >= 500_000
        error = await refused(second.send(b"hello", [b"list", b"y" * 600_000]),
                              errors.LimitExceeded)
        assert "all connections" in str(error)
        await stillServes(second)
    finally:
        await first.close()
        await second.close()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_pendingCallsPauseReading():
    """
    At maxPendingCalls calls in progress the server stops reading the peer;
    when they complete it reads on, and every call is answered.
    """
    clock = task.Clock()
    manager = UserManager(clock=clock)
    registry = Registry()
    registry.register(IUserManager, manager)
    server = Server(registry, maxPendingCalls=5)
    port = (await server.listen("tcp:0:interface=127.0.0.1")).getHost().port
    client = Client(f"tcp:127.0.0.1:{port}", heartbeat=None, callTimeout=None)
    try:
        users = await (await client.getRegistry()).getManager(IUserManager)
        calls = [users.slowEcho(i, 1) for i in range(20)]
        [broker] = [b for b in server._brokers]
        while broker._callsInProgress < 5:  # bounded by the test's timeout
            await pause()
        assert broker.readingPaused and broker._callsInProgress == 5
        for _ in range(10):  # each second completes the calls read so far
            clock.advance(1)
            await pause(0.05)
            if all(c.called for c in calls):
                break
        assert await defer.gatherResults(calls) == list(range(20))
        assert not broker.readingPaused
    finally:
        await client.stop()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_peerThatDoesNotReadIsPausedThenDropped():
    """
    Answers to a peer that does not read wait in the Flow up to
    maxOutboundBytes (plus one answer); then the server stops reading the
    peer, and drops it after maxLag.
    """
    clock = task.Clock()
    server, port, _ = await serve(maxOutboundBytes=2_000_000, maxLag=5, clock=clock)
    raw = RawClient()
    try:
        await raw.connect(port)
        users = await raw.view.callRemote("getManager", IUserManager.__identifier__)
        lost = defer.Deferred()
        raw.broker.notifyOnDisconnect(lambda: lost.callback(None))
        raw.broker.transport.pauseProducing()  # stop reading answers
        big = "x" * 500_000
        for _ in range(200):  # 100 MB of answers asked for, at most
            users.callRemote("echo", big).addErrback(lambda f: None)
        [broker] = list(server._brokers)
        for _ in range(500):  # bounded: until the server stops reading
            if broker.readingPaused:
                break
            await pause()
        assert broker.readingPaused
        assert broker.flow.queued <= 2_000_000 + 600_000
        clock.advance(5)
        await lost.addTimeout(10, reactor)
    finally:
        await raw.close()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_idleProbeKeepsAnsweringPeersAndDropsSilentOnes():
    """
    A stock PB client with no heartbeat answers the server's probe and
    stays; a TCP peer that says nothing after the opening is dropped.
    """
    clock = task.Clock()
    server, port, _ = await serve(idleTimeout=10, clock=clock)
    stock = RawClient()
    try:
        await stock.connect(port)
        silent = await rawConnection(port)
        silent.transport.write(OPENING)
        for _ in range(3):  # three probes, each answered
            [broker] = [b for b in server._brokers if b.transport.getPeer().port
                        == stock.broker.transport.getHost().port]
            before = broker.lastReceived
            clock.advance(10)
            for _ in range(200):  # bounded: until the answer arrives
                if broker.lastReceived > before:
                    break
                await pause()
            assert broker.lastReceived > before
        clock.advance(5)
        await silent.lost.addTimeout(10, reactor)
        await stillServes(stock)
    finally:
        await stock.close()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_tricklingPeerIsDropped():
    """Slowloris: a message that takes longer than idleTimeout to arrive."""
    clock = task.Clock()
    server, port, _ = await serve(idleTimeout=10, clock=clock)
    raw = RawClient()
    try:
        await raw.connect(port)
        lost = defer.Deferred()
        raw.broker.notifyOnDisconnect(lambda: lost.callback(None))
        message = encode([b"message", 99, b"root", b"ping", 1, [b"list"], [b"dictionary"]])
        for i in range(12):  # one byte a "second", never the whole message
            raw.broker.transport.write(message[i : i + 1])
            [broker] = list(server._brokers)
            for _ in range(200):
                if broker._messageSince is not None:
                    break
                await pause()
            clock.advance(1)
            if lost.called:
                break
        await lost.addTimeout(10, reactor)
    finally:
        await raw.close()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_connectionLimitIsToldToTheClient():
    """
    A client over maxConnectionsPerAddress is told the server is at its
    connection limit; the refusal is logged once.
    """
    server, port, _ = await serve(maxConnectionsPerAddress=1)
    lines = LogLines()
    first = Client(f"tcp:127.0.0.1:{port}", heartbeat=None)
    second = Client(f"tcp:127.0.0.1:{port}", heartbeat=None, connectTimeout=2)
    try:
        await first.getRegistry()
        with pytest.raises(errors.ConnectionFailed, match="connection limit") as e:
            await second.getRegistry()
        assert "maxConnectionsPerAddress" in str(e.value)
        # The server's line, once per interval (the client logs each refusal
        # it gets too, in its own namespace).
        served = [e for e in lines.matching("at its connection limit")
                  if e.get("log_namespace") == "aurora.server"]
        assert len(served) == 1
    finally:
        lines.close()
        await second.stop()
        await first.stop()
        await server.stop()


class Note(Model):
    fields = ("text",)


@pytest_twisted.ensureDeferred
async def test_modelsAClientSendsCountAgainstItsReferenceLimit():
    """Each model a client sends is a subscription the server holds: counted."""
    server, port, _ = await serve(referenceLimit=100)
    client = Client(f"tcp:127.0.0.1:{port}", heartbeat=None)
    try:
        users = await (await client.getRegistry()).getManager(IUserManager)
        notes = [Note(text=str(i)) for i in range(150)]
        # (setOnline keeps the value: echoing a client's own models back to it
        # is another matter.)
        with pytest.raises(errors.LimitExceeded, match="referenceLimit"):
            await users.setOnline("alice", notes)
        # The subscriptions the refused call made are released (PB's
        # decache, then the client's uncache).
        [broker] = list(server._brokers)
        for _ in range(500):  # bounded
            if not broker.locallyCachedObjects:
                break
            await pause()
        assert not broker.locallyCachedObjects
        fresh = [Note(text=str(i)) for i in range(10)]
        assert await users.setOnline("alice", fresh) is None
    finally:
        await client.stop()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_referenceToAnObjectNeverHandedOutIsRefused():
    server, port, _ = await serve()
    raw = RawClient()
    try:
        await raw.connect(port)
        users = await raw.view.callRemote("getManager", IUserManager.__identifier__)
        requestID = raw.broker.newRequestID()
        d = defer.Deferred()
        raw.broker.waitingForAnswers[requestID] = d
        raw.broker.sendCall(b"message", requestID, users.luid, b"echo", 1,
                            [b"tuple", [b"local", 999_999]], [b"dictionary"])
        await refused(d.addTimeout(10, reactor), errors.SerializationError)
        await stillServes(raw)
    finally:
        await raw.close()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_bogusPBMessagesAreOneLineEach():
    """
    Well-framed PB messages with unknown or unhashable ids: no traceback,
    at most one line per connection per interval, and the connection stays.
    """
    server, port, _ = await serve()
    lines = LogLines()
    raw = RawClient()
    try:
        await raw.connect(port)
        for i in range(200):
            raw.broker.sendCall(b"cachemessage", 1000 + i, 4242 + i, b"x", 0,
                                [b"list"], [b"dictionary"])
            raw.broker.sendCall(b"message", 2000 + i, [b"list", 1], b"x", 0,
                                [b"list"], [b"dictionary"])
            raw.broker.sendCall(b"decref", 777 + i)
            raw.broker.sendCall(b"answer", 5000 + i, 1)
        await stillServes(raw)
        assert not [e for e in lines.events if e.get("log_failure") is not None]
        assert 1 <= len(lines.matching(str(raw.broker.transport.getHost().port))) <= 2
    finally:
        lines.close()
        await raw.close()
        await server.stop()


def test_grantsAreCheckedAtConstruction():
    with pytest.raises(ValueError, match="unknown limit 'bogus'"):
        Server(Registry(), grants={"relay": {"bogus": 1}})
    with pytest.raises(ValueError, match="errorDetail"):
        Server(Registry(), errorDetail="everything")
    raised = Limits().granted({"referenceLimit": 10**9}, Limits(referenceLimit=5000))
    assert raised.referenceLimit == 5000
    assert Limits().granted({"referenceLimit": 10}).referenceLimit == 1024  # never lowered


@pytest_twisted.ensureDeferred
async def test_referencesCannotAmplifyAnAnswer():
    """
    jelly's references let a few bytes name one string many times over; a
    method that returns what it was given would send every copy.  Such a
    call is refused before the method runs.
    """
    server, port, _ = await serve()
    raw = RawClient()
    try:
        await raw.connect(port)
        users = await raw.view.callRemote("getManager", IUserManager.__identifier__)
        text = [b"reference", 1, [b"unicode", b"x" * 600_000]]
        copies = [b"list", text] + [[b"dereference", 1]] * 100  # 60 MB expanded
        requestID = raw.broker.newRequestID()
        d = defer.Deferred()
        raw.broker.waitingForAnswers[requestID] = d
        raw.broker.sendCall(b"message", requestID, users.luid, b"echo", 1,
                            [b"tuple", copies], [b"dictionary"])
        error = await refused(d.addTimeout(10, reactor), errors.LimitExceeded)
        assert "references expanded" in str(error)
        requestID = raw.broker.newRequestID()
        d = defer.Deferred()
        raw.broker.waitingForAnswers[requestID] = d
        few = [b"list", text] + [[b"dereference", 1]] * 3
        raw.broker.sendCall(b"message", requestID, users.luid, b"echo", 1,
                            [b"tuple", few], [b"dictionary"])
        assert len(await d.addTimeout(10, reactor)) == 4
        await stillServes(raw)
    finally:
        await raw.close()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_unknownCommandsAreNotEchoedNorLoggedWhole():
    """
    Stock PB echoes an unknown command back and logs a peer's
    didNotUnderstand whole.  Before login either closes the connection;
    after, it is one short line per interval.
    """
    server, port, _ = await serve()
    lines = LogLines()
    raw = RawClient()
    try:
        peer = await rawConnection(port)
        peer.transport.write(OPENING + encode([b"didNotUnderstand", b"\xff" * 10_000]))
        await peer.lost.addTimeout(10, reactor)
        await raw.connect(port)
        for _ in range(100):
            raw.broker.sendCall(b"didNotUnderstand", b"\xff" * 10_000)
            raw.broker.sendCall(b"bogus" * 1000, 1)
        await stillServes(raw)
        mine = lines.matching(str(raw.broker.transport.getHost().port))
        assert 1 <= len(mine) <= 2
        assert all(len(formatEvent(e)) < 400 for e in lines.events)
    finally:
        lines.close()
        await raw.close()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_helloAndLoginAgainCostNoLogLines():
    """A peer's own words in hello are cut; hello twice is an error; login twice, one line."""
    server, port, _ = await serve()
    lines = LogLines()
    raw = RawClient()
    try:
        await raw.connect(port)
        said = {"protocol": 2, "aurora": "x" * 5000}
        await raw.root.callRemote("hello", said)
        with pytest.raises(Exception, match="already exchanged"):
            await raw.root.callRemote("hello", said)
        for _ in range(50):
            await raw.root.callRemote("login", None, None)
        assert len(lines.matching("logged in as")) == 1
        assert all(len(formatEvent(e)) < 400 for e in lines.events)
    finally:
        lines.close()
        await raw.close()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_callsThatWantNoAnswerRegisterNothingAndLogQuietly():
    """
    A call sent with answerRequired=0: its result is not serialized (no
    reference the peer never hears of), and its failures are logged through
    the rate-limited log, never as an unhandled error.
    """
    server, port, _ = await serve()
    lines = LogLines()
    raw = RawClient()
    try:
        await raw.connect(port)
        users = await raw.view.callRemote("getManager", IUserManager.__identifier__)
        [broker] = list(server._brokers)
        before = len(broker.localObjects)
        for _ in range(200):
            raw.broker.sendCall(b"message", raw.broker.newRequestID(), users.luid,
                                b"getAdmin", 0, [b"tuple"], [b"dictionary"])
            raw.broker.sendCall(b"message", raw.broker.newRequestID(), users.luid,
                                b"fail", 0, [b"tuple", [b"unicode", b"deferred"]],
                                [b"dictionary"])
        await stillServes(raw)
        assert len(broker.localObjects) == before
        assert not lines.matching("Unhandled error")
        assert len([e for e in lines.events if e.get("log_failure")]) <= 1
    finally:
        lines.close()
        await raw.close()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_pipelinerIsProbedNotTakenForATrickler():
    """
    A client whose pipelined calls paused reading, and that then goes quiet,
    is probed (and stays), not dropped for "taking too long to send one
    message".
    """
    clock = task.Clock()
    manager = UserManager(clock=clock)
    registry = Registry()
    registry.register(IUserManager, manager)
    server = Server(registry, maxPendingCalls=2, idleTimeout=10, clock=clock)
    port = (await server.listen("tcp:0:interface=127.0.0.1")).getHost().port
    raw = RawClient()
    try:
        await raw.connect(port)
        users = await raw.view.callRemote("getManager", IUserManager.__identifier__)
        calls = [users.callRemote("slowEcho", i, 1) for i in range(3)]
        [broker] = list(server._brokers)
        for _ in range(500):  # bounded: until reading has paused
            if broker.readingPaused:
                break
            await pause()
        for _ in range(3):
            clock.advance(1)
            await pause(0.05)
        assert [await c for c in calls] == [0, 1, 2]
        assert broker._messageSince is None
        for _ in range(2):  # two idle spells, each probed and answered
            before = broker.lastReceived
            clock.advance(10)
            for _ in range(200):
                if broker.lastReceived > before:
                    break
                await pause()
            assert broker.lastReceived > before
        await stillServes(raw)
    finally:
        await raw.close()
        await server.stop()


def test_expandedSizeCountsWhatJellyWouldSendOnly():
    """
    Only strings, containers and declared types' fields count: not other
    attributes of what arrived (a wrapper reaches its factory, the reactor,
    the whole process).
    """
    from aurora._wire import _expandedSize
    from tests.app import User

    class Holder:
        def __init__(self) -> None:
            self.world = ["x" * 1000] * 10_000

    text = "y" * 1000
    assert _expandedSize([Holder(), text, text], 10**9) == 3 * 8 + 2000
    user = User(name=text, email=text)
    user.notAField = ["z" * 1000] * 1000
    assert _expandedSize(user, 10**9) == 2000
    # It stops once past the limit, not at the 1,008,000 bytes in all.
    assert 5000 < _expandedSize([text] * 1000, 5000) <= 8 * 1000 + 1000


@pytest.mark.parametrize("message, why", [
    (encode([b"message", 1, b"root", b"hello", 1, [b"tuple", b"x" * 20_000],
             [b"dictionary"]]), "bytes"),
    (b"", "depth"),  # built in the test: 25 levels
])
@pytest_twisted.ensureDeferred
async def test_eachBudgetBeforeLoginClosesTheConnection(message, why):
    """Before login: 16 KiB and 20 levels per message (items: see above)."""
    if why == "depth":
        deep: list = [b"tuple", 0]
        for _ in range(25):
            deep = [b"tuple", deep]
        message = encode([b"message", 1, b"root", b"hello", 1, deep, [b"dictionary"]])
    server, port, _ = await serve()
    lines = LogLines()
    try:
        peer = await rawConnection(port)
        peer.transport.write(OPENING + message)
        await peer.lost.addTimeout(10, reactor)
        [line] = lines.matching("dropping the connection")
        assert "before logging in" in formatEvent(line)
        assert ("16384 bytes" if why == "bytes" else "20 levels") in formatEvent(line)
    finally:
        lines.close()
        await server.stop()


class _Http(protocol.Protocol):
    def connectionMade(self) -> None:
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        self.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_aFailedConnectionSaysWhy(tmp_path):
    """
    An untrusted certificate, plain TCP to a TLS port and a peer that is not
    aurora each fail getRegistry with their own cause, not one catch-all.
    """
    from twisted.internet.endpoints import TCP4ServerEndpoint

    from tests.helpers import makeCertificate

    key, cert = makeCertificate(tmp_path)
    server, _, _ = await serve()
    tls = (await server.listen(f"ssl:0:privateKey={key}:certKey={cert}:"
                               "interface=127.0.0.1")).getHost().port
    http = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(_Http))
    cases = [
        (f"tls:localhost:{tls}", "certificate is not trusted"),
        (f"tcp:127.0.0.1:{tls}", "TLS"),
        (f"tcp:127.0.0.1:{http.getHost().port}", "not an aurora server: it sent b'HTTP/1.1"),
    ]
    try:
        for endpoint, words in cases:
            client = Client(endpoint, heartbeat=None, connectTimeout=2,
                            reconnectDelay=0.05, maxReconnectDelay=0.2)
            try:
                with pytest.raises(errors.ConnectionFailed) as e:
                    await client.getRegistry()
                assert words in str(e.value), (endpoint, str(e.value))
            finally:
                await client.stop()
    finally:
        await http.stopListening()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_aFaultOfOursIsLoggedAsOursNotThePeers(monkeypatch):
    """
    An exception in this side's own handling of a well-formed message is
    logged with its traceback as ours, and the peer is not dropped for it.
    """
    from aurora._wire import Broker

    server, port, _ = await serve()
    lines = LogLines()
    raw = RawClient()
    try:
        await raw.connect(port)

        def broken(self, objectID):
            raise ZeroDivisionError("a bug of ours")

        monkeypatch.setattr(Broker, "proto_decref", broken)
        raw.broker.sendCall(b"decref", 1)
        await stillServes(raw)
        [ours] = [e for e in lines.events if e.get("log_failure") is not None]
        assert "handling a message from" in formatEvent(ours)
        assert ours["log_failure"].check(ZeroDivisionError)
        assert not lines.matching("malformed")
    finally:
        lines.close()
        await raw.close()
        await server.stop()
