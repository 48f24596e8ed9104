"""
The limits that bound what one peer can make a server spend, each against a
real server on 127.0.0.1: message budgets before and after login, the
budget all connections share, calls in progress, bytes waiting for a peer
that does not read, idle and trickling peers, connection limits, and the
state a peer can make the server hold.  (tests/test_attacks.py measures the
same attacks against a server process.)
"""

from __future__ import annotations

from typing import Any, Callable

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


class Raw(protocol.Protocol):
    """A TCP peer that writes what it is told and records whether it was closed."""

    def __init__(self) -> None:
        self.lost: defer.Deferred = defer.Deferred()
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        self.lost.callback(None)


class Rig:
    """
    What one test starts (servers, clients, raw peers, log observers), each
    closed when the test ends, in reverse order of creation, so that clients
    made after a server go before it.  Every one is closed even if another
    fails to close; those failures are raised together at the end, and
    pytest reports them apart from the test's own.
    """

    # Per close: a close that hangs fails this test, not the whole run.
    closeTimeout = 30

    def __init__(self) -> None:
        self._closers: list[Callable[[], Any]] = []

    def closeLater(self, close: Callable[[], Any]) -> None:
        """Call C{close} when the test ends; it may return a Deferred or a coroutine."""
        self._closers.append(close)

    async def serve(self, *, manager: UserManager | None = None,
                    **options: Any) -> tuple[Server, int, UserManager]:
        """
        A L{Server} made with C{options}, publishing C{manager} (a new
        L{UserManager} unless given) on 127.0.0.1: the server, its port, the
        manager.
        """
        manager = UserManager() if manager is None else manager
        registry = Registry()
        registry.register(IUserManager, manager)
        server = Server(registry, **options)
        self.closeLater(server.stop)
        port = (await server.listen("tcp:0:interface=127.0.0.1")).getHost().port
        return server, port, manager

    def client(self, port: int | str, **options: Any) -> Client:
        """
        An aurora L{Client} of C{port} on 127.0.0.1 (or of an endpoint
        string), with no heartbeat unless C{options} ask for one.
        """
        endpoint = f"tcp:127.0.0.1:{port}" if isinstance(port, int) else port
        options.setdefault("heartbeat", None)
        client = Client(endpoint, **options)
        self.closeLater(client.stop)
        return client

    async def raw(self, port: int) -> RawClient:
        """A stock PB client connected and logged in to C{port}."""
        client = RawClient()

        async def close() -> None:
            if getattr(client, "broker", None) is not None:  # it got that far
                await client.close()

        self.closeLater(close)
        await client.connect(port)
        return client

    async def rawConnection(self, port: int) -> Raw:
        """A bare TCP connection to C{port}, nothing sent yet."""
        peer = Raw()
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(
            protocol.Factory.forProtocol(lambda: peer))

        async def close() -> None:
            if not peer.lost.called:
                peer.transport.loseConnection()
                await peer.lost

        self.closeLater(close)
        return peer

    def logLines(self) -> LogLines:
        """The log events from now until the test ends."""
        lines = LogLines()
        self.closeLater(lines.close)
        return lines

    async def close(self) -> None:
        failures: list[Exception] = []
        while self._closers:
            close = self._closers.pop()
            try:
                await defer.maybeDeferred(close).addTimeout(self.closeTimeout, reactor)
            except Exception as e:
                failures.append(e)
        if len(failures) == 1:
            raise failures[0]
        if failures:
            raise ExceptionGroup("closing what the test started", failures)


@pytest_twisted.async_yield_fixture()
async def rig():
    r = Rig()
    yield r
    await r.close()


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
async def test_amplificationBeforeLoginClosesAtTheBudget(rig):
    """
    15 MB of empty lists before login: refused at the budget before login
    (1,000 items), the connection closed with one warning, other clients
    untouched.
    """
    server, port, _ = await rig.serve()
    lines = rig.logLines()
    bystander = await rig.raw(port)
    peer = await rig.rawConnection(port)
    payload = OPENING + emptyLists(15_000_000)
    for i in range(0, len(payload), 1 << 20):  # bounded: 15 writes
        peer.transport.write(payload[i : i + (1 << 20)])
    await peer.lost.addTimeout(10, reactor)
    [line] = lines.matching("dropping the connection")
    assert "before logging in" in formatEvent(line)
    assert server.factory.pool.items == 0 and server.factory.pool.bytes == 0
    await stillServes(bystander)


@pytest_twisted.ensureDeferred
async def test_itemBudgetAfterLoginAnswersAndKeepsTheConnection(rig):
    """
    After login a call over maxMessageItems is answered with LimitExceeded,
    naming the setting, without being built; the connection stays.
    """
    _, port, _ = await rig.serve(maxMessageItems=10_000)
    raw = await rig.raw(port)
    error = await refused(raw.send(b"hello", [b"list", [b"list"] + [1] * 20_000]),
                          errors.LimitExceeded)
    assert "maxMessageItems" in str(error) and error.limit == 10_000
    await stillServes(raw)
    # A list of 100,000 small records passes the default budget.
    _, port2, _ = await rig.serve()
    users = await (await rig.client(port2).getRegistry()).getManager(IUserManager)
    records = [("user%d" % i, "user%d@example.org" % i, i) for i in range(100_000)]
    assert await users.echo(records) == records


@pytest_twisted.ensureDeferred
async def test_tenMegabyteBlobPasses(rig):
    _, port, _ = await rig.serve()
    users = await (await rig.client(port).getRegistry()).getManager(IUserManager)
    blob = [b"x" * 600_000] * 17  # 10.2 MB in tokens under banana's 640 KB
    assert await users.echo(blob) == blob


@pytest_twisted.ensureDeferred
async def test_sharedPoolRefusesWhatWouldTakeItOver(rig):
    """
    Messages in progress on all connections share maxDecodingBytes: a
    second large message while the first is incomplete is refused with
    LimitExceeded, and its connection stays.
    """
    server, port, _ = await rig.serve(maxDecodingBytes=1_000_000)
    first = await rig.raw(port)
    second = await rig.raw(port)
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


@pytest_twisted.ensureDeferred
async def test_pendingCallsPauseReading(rig):
    """
    At maxPendingCalls calls in progress the server stops reading the peer;
    when they complete it reads on, and every call is answered.
    """
    clock = task.Clock()
    server, port, _ = await rig.serve(manager=UserManager(clock=clock), maxPendingCalls=5)
    client = rig.client(port, callTimeout=None)
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


@pytest_twisted.ensureDeferred
async def test_peerThatDoesNotReadIsPausedThenDropped(rig):
    """
    Answers to a peer that does not read wait in the Flow up to
    maxOutboundBytes (plus one answer); then the server stops reading the
    peer, and drops it after maxLag.
    """
    clock = task.Clock()
    server, port, _ = await rig.serve(maxOutboundBytes=2_000_000, maxLag=5, clock=clock)
    raw = await rig.raw(port)
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


@pytest_twisted.ensureDeferred
async def test_idleProbeKeepsAnsweringPeersAndDropsSilentOnes(rig):
    """
    A stock PB client with no heartbeat answers the server's probe and
    stays; a TCP peer that says nothing after the opening is dropped.
    """
    clock = task.Clock()
    server, port, _ = await rig.serve(idleTimeout=10, clock=clock)
    stock = await rig.raw(port)
    silent = await rig.rawConnection(port)
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


@pytest_twisted.ensureDeferred
async def test_tricklingPeerIsDropped(rig):
    """Slowloris: a message that takes longer than idleTimeout to arrive."""
    clock = task.Clock()
    server, port, _ = await rig.serve(idleTimeout=10, clock=clock)
    raw = await rig.raw(port)
    lost = defer.Deferred()
    raw.broker.notifyOnDisconnect(lambda: lost.callback(None))
    message = encode([b"message", 99, b"root", b"ping", 1, [b"list"], [b"dictionary"]])
    for i in range(12):  # one byte a "second", never the whole message
        raw.broker.transport.write(message[i : i + 1])
        [broker] = list(server._brokers)
        for _ in range(200):
            if broker.messageSince is not None:
                break
            await pause()
        clock.advance(1)
        if lost.called:
            break
    await lost.addTimeout(10, reactor)


@pytest_twisted.ensureDeferred
async def test_connectionLimitIsToldToTheClient(rig):
    """
    A client over maxConnectionsPerAddress is told the server is at its
    connection limit; the refusal is logged once.
    """
    _, port, _ = await rig.serve(maxConnectionsPerAddress=1)
    lines = rig.logLines()
    first = rig.client(port)
    second = rig.client(port, connectTimeout=2)
    await first.getRegistry()
    with pytest.raises(errors.ConnectionFailed, match="connection limit") as e:
        await second.getRegistry()
    assert "maxConnectionsPerAddress" in str(e.value)
    # The server's line, once per interval (the client logs each refusal
    # it gets too, in its own namespace).
    served = [e for e in lines.matching("at its connection limit")
              if e.get("log_namespace") == "aurora.server"]
    assert len(served) == 1


class Note(Model):
    fields = ("text",)


@pytest_twisted.ensureDeferred
async def test_modelsAClientSendsCountAgainstItsReferenceLimit(rig):
    """Each model a client sends is a subscription the server holds: counted."""
    server, port, _ = await rig.serve(referenceLimit=100)
    users = await (await rig.client(port).getRegistry()).getManager(IUserManager)
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


@pytest_twisted.ensureDeferred
async def test_referenceToAnObjectNeverHandedOutIsRefused(rig):
    _, port, _ = await rig.serve()
    raw = await rig.raw(port)
    users = await raw.view.callRemote("getManager", IUserManager.__identifier__)
    requestID = raw.broker.newRequestID()
    d = defer.Deferred()
    raw.broker.waitingForAnswers[requestID] = d
    raw.broker.sendCall(b"message", requestID, users.luid, b"echo", 1,
                        [b"tuple", [b"local", 999_999]], [b"dictionary"])
    await refused(d.addTimeout(10, reactor), errors.SerializationError)
    await stillServes(raw)


@pytest_twisted.ensureDeferred
async def test_bogusPBMessagesAreOneLineEach(rig):
    """
    Well-framed PB messages with unknown or unhashable ids: no traceback,
    at most one line per connection per interval, and the connection stays.
    """
    _, port, _ = await rig.serve()
    lines = rig.logLines()
    raw = await rig.raw(port)
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


def test_grantsAreCheckedAtConstruction():
    with pytest.raises(ValueError, match="unknown limit 'bogus'"):
        Server(Registry(), grants={"relay": {"bogus": 1}})
    with pytest.raises(ValueError, match="errorDetail"):
        Server(Registry(), errorDetail="everything")
    raised = Limits().granted({"referenceLimit": 10**9}, Limits(referenceLimit=5000))
    assert raised.referenceLimit == 5000
    assert Limits().granted({"referenceLimit": 10}).referenceLimit == 1024  # never lowered


@pytest_twisted.ensureDeferred
async def test_referencesCannotAmplifyAnAnswer(rig):
    """
    jelly's references let a few bytes name one string many times over; a
    method that returns what it was given would send every copy.  Such a
    call is refused before the method runs.
    """
    _, port, _ = await rig.serve()
    raw = await rig.raw(port)
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


@pytest_twisted.ensureDeferred
async def test_unknownCommandsAreNotEchoedNorLoggedWhole(rig):
    """
    Stock PB echoes an unknown command back and logs a peer's
    didNotUnderstand whole.  Before login either closes the connection;
    after, it is one short line per interval.
    """
    _, port, _ = await rig.serve()
    lines = rig.logLines()
    peer = await rig.rawConnection(port)
    peer.transport.write(OPENING + encode([b"didNotUnderstand", b"\xff" * 10_000]))
    await peer.lost.addTimeout(10, reactor)
    raw = await rig.raw(port)
    for _ in range(100):
        raw.broker.sendCall(b"didNotUnderstand", b"\xff" * 10_000)
        raw.broker.sendCall(b"bogus" * 1000, 1)
    await stillServes(raw)
    mine = lines.matching(str(raw.broker.transport.getHost().port))
    assert 1 <= len(mine) <= 2
    assert all(len(formatEvent(e)) < 400 for e in lines.events)


@pytest_twisted.ensureDeferred
async def test_helloAndLoginAgainCostNoLogLines(rig):
    """A peer's own words in hello are cut; hello twice is an error; login twice, one line."""
    _, port, _ = await rig.serve()
    lines = rig.logLines()
    raw = await rig.raw(port)
    said = {"protocol": 2, "aurora": "x" * 5000}
    await raw.root.callRemote("hello", said)
    with pytest.raises(Exception, match="already exchanged"):
        await raw.root.callRemote("hello", said)
    for _ in range(50):
        await raw.root.callRemote("login", None, None)
    assert len(lines.matching("logged in as")) == 1
    assert all(len(formatEvent(e)) < 400 for e in lines.events)


@pytest_twisted.ensureDeferred
async def test_callsThatWantNoAnswerRegisterNothingAndLogQuietly(rig):
    """
    A call sent with answerRequired=0: its result is not serialized (no
    reference the peer never hears of), and its failures are logged through
    the rate-limited log, never as an unhandled error.
    """
    server, port, _ = await rig.serve()
    lines = rig.logLines()
    raw = await rig.raw(port)
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


@pytest_twisted.ensureDeferred
async def test_pipelinerIsProbedNotTakenForATrickler(rig):
    """
    A client whose pipelined calls paused reading, and that then goes quiet,
    is probed (and stays), not dropped for "taking too long to send one
    message".
    """
    clock = task.Clock()
    server, port, _ = await rig.serve(manager=UserManager(clock=clock), maxPendingCalls=2,
                                      idleTimeout=10, clock=clock)
    raw = await rig.raw(port)
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
    assert broker.messageSince is None
    for _ in range(2):  # two idle spells, each probed and answered
        before = broker.lastReceived
        clock.advance(10)
        for _ in range(200):
            if broker.lastReceived > before:
                break
            await pause()
        assert broker.lastReceived > before
    await stillServes(raw)


def test_expandedSizeCountsWhatJellyWouldSendOnly():
    """
    Only strings, containers and declared types' fields count: not other
    attributes of what arrived (a wrapper reaches its factory, the reactor,
    the whole process).
    """
    from aurora._jelly import _expandedSize
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
async def test_eachBudgetBeforeLoginClosesTheConnection(rig, message, why):
    """Before login: 16 KiB and 20 levels per message (items: see above)."""
    if why == "depth":
        deep: list = [b"tuple", 0]
        for _ in range(25):
            deep = [b"tuple", deep]
        message = encode([b"message", 1, b"root", b"hello", 1, deep, [b"dictionary"]])
    _, port, _ = await rig.serve()
    lines = rig.logLines()
    peer = await rig.rawConnection(port)
    peer.transport.write(OPENING + message)
    await peer.lost.addTimeout(10, reactor)
    [line] = lines.matching("dropping the connection")
    assert "before logging in" in formatEvent(line)
    assert ("16384 bytes" if why == "bytes" else "20 levels") in formatEvent(line)


class _Http(protocol.Protocol):
    def connectionMade(self) -> None:
        self.transport.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        self.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_aFailedConnectionSaysWhy(tmp_path, rig):
    """
    An untrusted certificate, plain TCP to a TLS port and a peer that is not
    aurora each fail getRegistry with their own cause, not one catch-all.
    """
    from twisted.internet.endpoints import TCP4ServerEndpoint

    from tests.helpers import makeCertificate

    key, cert = makeCertificate(tmp_path)
    server, _, _ = await rig.serve()
    tls = (await server.listen(f"ssl:0:privateKey={key}:certKey={cert}:"
                               "interface=127.0.0.1")).getHost().port
    http = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(_Http))
    rig.closeLater(http.stopListening)
    cases = [
        (f"tls:localhost:{tls}", "certificate is not trusted"),
        (f"tcp:127.0.0.1:{tls}", "TLS"),
        (f"tcp:127.0.0.1:{http.getHost().port}", "not an aurora server: it sent b'HTTP/1.1"),
    ]
    for endpoint, words in cases:
        client = rig.client(endpoint, connectTimeout=2,
                            reconnectDelay=0.05, maxReconnectDelay=0.2)
        with pytest.raises(errors.ConnectionFailed) as e:
            await client.getRegistry()
        assert words in str(e.value), (endpoint, str(e.value))
        await client.stop()  # before the next case, as a user would


@pytest_twisted.ensureDeferred
async def test_aFaultOfOursIsLoggedAsOursNotThePeers(monkeypatch, rig):
    """
    An exception in this side's own handling of a well-formed message is
    logged with its traceback as ours, and the peer is not dropped for it.
    """
    from aurora._broker import Broker

    _, port, _ = await rig.serve()
    lines = rig.logLines()
    raw = await rig.raw(port)

    def broken(self, objectID):
        raise ZeroDivisionError("a bug of ours")

    monkeypatch.setattr(Broker, "proto_decref", broken)
    raw.broker.sendCall(b"decref", 1)
    await stillServes(raw)
    [ours] = [e for e in lines.events if e.get("log_failure") is not None]
    assert "handling a message from" in formatEvent(ours)
    assert ours["log_failure"].check(ZeroDivisionError)
    assert not lines.matching("malformed")
