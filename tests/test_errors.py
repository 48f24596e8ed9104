"""
What a caller sees when something goes wrong, and what the server logs:
a non-aurora exception travels as its type and an error id (its message only
with C{errorDetail="message"}), its traceback is logged under that id at most
once per interval and kind, and no message holds a memory address.
"""

from __future__ import annotations

import re
import socket

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.spread import jelly

from aurora import Client, Copyable, Registry, Server, _jelly, errors
from aurora._manager import _toRemoteError
from aurora._quiet import LogLimiter
from aurora._types import Declared
from aurora._resync import Origin
from aurora.remote import Wrapper, registerWrapper
from tests.app import IAdmin, IUserManager, UserManager

SECRET = "connect to postgres://app:hunter2@db.internal/prod failed"
ID = re.compile(r"[0-9a-f]{8}")


class Undeclared:
    """A class no one declared: it cannot travel."""


class Exploding(Copyable):
    """A copy whose own code fails while it is being sent."""

    fields = ("name",)

    def getStateToCopy(self):
        raise RuntimeError(f"cannot read {SECRET}")


class Events:
    """Log events, from an injected Logger or the global publisher."""

    def __init__(self) -> None:
        self.events: list[dict] = []

    def __call__(self, event: dict) -> None:
        self.events.append(event)

    def tracebacks(self) -> list[dict]:
        return [e for e in self.events if "log_failure" in e and "errorId" in e]


def injectErrorLog(server: Server) -> tuple[Events, task.Clock]:
    """Give C{server} an error log with its own clock and observer."""
    events, clock = Events(), task.Clock()
    server.factory.errorLog = LogLimiter(Logger(observer=events), clock)
    return events, clock


async def failures(ds: list[defer.Deferred]) -> list[Exception]:
    results = await defer.DeferredList(ds, consumeErrors=True)
    assert all(not ok for ok, _ in results)
    return [f.value for _, f in results]


# -- what the caller sees


@pytest_twisted.ensureDeferred
async def test_remoteErrorHasTypeAndIdNotTheMessage(served):
    users = await served.remote.getManager(IUserManager)
    with pytest.raises(errors.RemoteError) as e:
        await users.fail(SECRET)  # raises RuntimeError(SECRET) on the server
    error = e.value
    assert ID.fullmatch(error.errorId)
    assert error.remoteType == "builtins.RuntimeError"
    assert str(error) == error.message == (
        f"builtins.RuntimeError in tests.app.IUserManager.fail "
        f"(error id {error.errorId})")
    assert "hunter2" not in str(error)


@pytest_twisted.ensureDeferred
async def test_failedDeferredLikewise(served):
    users = await served.remote.getManager(IUserManager)
    with pytest.raises(errors.RemoteError) as e:
        await users.fail("deferred")  # defer.fail(KeyError("missing"))
    assert str(e.value) == (f"builtins.KeyError in tests.app.IUserManager.fail "
                            f"(error id {e.value.errorId})")
    assert "missing" not in str(e.value)


@pytest_twisted.ensureDeferred
async def test_exceptionWhileSendingTheResult(served):
    # Raised by application code inside PB's jelly, not in the method: PB
    # would log it per call and send its message on.
    users = await served.remote.getManager(IUserManager)
    events, clock = injectErrorLog(served.server)
    served.manager.users["boom"] = Exploding(name="boom")
    with pytest.raises(errors.RemoteError) as plain:
        await users.getUser("boom")
    served.manager.getUser = lambda name: defer.succeed(Exploding(name=name))
    with pytest.raises(errors.RemoteError) as deferred:
        await users.getUser("boom")
    for e in (plain, deferred):
        assert e.value.remoteType == "builtins.RuntimeError"
        assert "tests.app.IUserManager.getUser" in str(e.value)
        assert "hunter2" not in str(e.value)
    assert [t["errorId"] for t in events.tracebacks()] == [plain.value.errorId]
    assert await users.echo(1) == 1


@pytest_twisted.ensureDeferred
async def test_errorDetailMessageSendsTheMessageToo(served):
    served.server.factory.errorDetail = "message"
    users = await served.remote.getManager(IUserManager)
    with pytest.raises(errors.RemoteError) as e:
        await users.fail("value")  # ValueError("bad value 42")
    assert str(e.value) == (f"builtins.ValueError in tests.app.IUserManager.fail: "
                            f"bad value 42 (error id {e.value.errorId})")
    assert e.value.remoteType == "builtins.ValueError"
    # Still one line, without addresses, and bounded.
    with pytest.raises(errors.RemoteError) as e:
        await users.fail("first line\n  second <app.Thing object at 0x7f3a2c1d9e50>\n")
    assert str(e.value) == (
        "builtins.RuntimeError in tests.app.IUserManager.fail: first line second "
        f"<app.Thing object> (error id {e.value.errorId})")
    with pytest.raises(errors.RemoteError) as e:
        await users.fail("x" * 100_000)
    assert len(str(e.value)) < 1200 and str(e.value).endswith(
        f"... (error id {e.value.errorId})")


@pytest_twisted.ensureDeferred
async def test_serverMadeWithErrorDetailMessage():
    registry = Registry()
    registry.register(IUserManager, UserManager())
    server = Server(registry, errorDetail="message")
    port = (await server.listen("tcp:0:interface=127.0.0.1")).getHost().port
    client = Client(f"tcp:127.0.0.1:{port}", heartbeat=None)
    try:
        users = await (await client.getRegistry()).getManager(IUserManager)
        with pytest.raises(errors.RemoteError) as e:
            await users.fail(SECRET)
        assert str(e.value) == (f"builtins.RuntimeError in tests.app.IUserManager.fail: "
                                f"{SECRET} (error id {e.value.errorId})")
    finally:
        await client.stop()
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_otherErrorDetailIsTheDefault(served):
    served.server.factory.errorDetail = "type"
    users = await served.remote.getManager(IUserManager)
    with pytest.raises(errors.RemoteError) as e:
        await users.fail(SECRET)
    assert "hunter2" not in str(e.value)


@pytest_twisted.ensureDeferred
async def test_aurorasOwnAndApplicationErrorsAreUnchanged(served):
    served.server.factory.errorDetail = "type"
    users = await served.remote.getManager(IUserManager)
    with pytest.raises(errors.Error) as e:
        await users.fail("app")
    assert str(e.value) == "alice may not" and e.value.who == "alice"
    with pytest.raises(errors.UnknownInterface, match="nope.INope"):
        await served.remote.getManager("nope.INope")


# -- the server's log


@pytest_twisted.ensureDeferred
async def test_errorIdIsInTheServersLogLine(served):
    events, clock = injectErrorLog(served.server)
    users = await served.remote.getManager(IUserManager)
    with pytest.raises(errors.RemoteError) as e:
        await users.fail(SECRET)
    [logged] = events.tracebacks()
    assert logged["errorId"] == e.value.errorId
    assert e.value.errorId in formatEvent(logged)
    assert "tests.app.IUserManager.fail" in formatEvent(logged)
    # The server keeps the whole story: the exception with its message.
    assert isinstance(logged["log_failure"].value, RuntimeError)
    assert str(logged["log_failure"].value) == SECRET


@pytest_twisted.ensureDeferred
async def test_aThousandFailingCallsLogOneTraceback(served):
    events, clock = injectErrorLog(served.server)
    users = await served.remote.getManager(IUserManager)
    errorsSeen = await failures([users.fail("value") for _ in range(1000)])
    assert all(isinstance(e, errors.RemoteError) for e in errorsSeen)
    [logged] = events.tracebacks()
    # Every caller gets the id of the traceback that stands for theirs.
    assert {e.errorId for e in errorsSeen} == {logged["errorId"]}

    # Another exception type, another method: logged on their own.
    [keyError] = await failures([users.fail("deferred")])
    [getUser] = await failures([users.getUser("nobody")])
    assert len(events.tracebacks()) == 3
    assert keyError.errorId != logged["errorId"] != getUser.errorId
    assert [t["errorId"] for t in events.tracebacks()[1:]] == [
        keyError.errorId, getUser.errorId]

    # After the interval: one more line, saying how many it left out.
    clock.advance(served.server.factory.errorLog.interval)
    [later] = await failures([users.fail("value")])
    assert len(events.tracebacks()) == 4
    last = events.tracebacks()[-1]
    assert last["errorId"] == later.errorId != logged["errorId"]
    assert "(and 999 more like it)" in formatEvent(last)


@pytest_twisted.ensureDeferred
async def test_theServersOwnErrorLogIsTimedByItsClock():
    # Nothing injected: the server's own error log, timed by its clock,
    # written to the global log.
    clock = task.Clock()
    registry = Registry()
    registry.register(IUserManager, UserManager())
    server = Server(registry, clock=clock)
    port = (await server.listen("tcp:0:interface=127.0.0.1")).getHost().port
    client = Client(f"tcp:127.0.0.1:{port}", heartbeat=None)
    events = Events()
    globalLogPublisher.addObserver(events)
    try:
        users = await (await client.getRegistry()).getManager(IUserManager)
        seen = await failures([users.fail("value") for _ in range(1000)])
        assert all(isinstance(e, errors.RemoteError) for e in seen)
        [logged] = events.tracebacks()
        assert {e.errorId for e in seen} == {logged["errorId"]}
        clock.advance(server.factory.errorLog.interval)
        [later] = await failures([users.fail("value")])
        assert isinstance(later, errors.RemoteError)
        assert [t["errorId"] for t in events.tracebacks()] == [
            logged["errorId"], later.errorId]
        assert "(and 999 more like it)" in formatEvent(events.tracebacks()[-1])
    finally:
        globalLogPublisher.removeObserver(events)
        await client.stop()
        await server.stop()


def test_aBrokerWithoutAnErrorLogUsesTheProcessOne():
    class Bare:
        factory = None

    failure = Failure(RuntimeError(SECRET))
    error = _toRemoteError(failure, "some.IThing.method", Bare()).value
    assert isinstance(error, errors.RemoteError) and "hunter2" not in str(error)
    assert str(error) == (f"builtins.RuntimeError in some.IThing.method "
                          f"(error id {error.errorId})")


# -- the errorId field on the wire


class OldRemoteError(Declared, declare=False):
    """RemoteError as a peer from before errorId declares it."""

    fields = ("message", "remoteType")


def test_errorIdIsWireCompatible():
    # From a peer that sends no errorId: None.
    sexp = [errors.RemoteError.typeName.encode(), [
        b"dictionary", [[b"unicode", b"message"], [b"unicode", b"x"]],
        [[b"unicode", b"remoteType"], [b"unicode", b"builtins.KeyError"]]]]
    got = jelly.unjelly(sexp, taster=_jelly.SECURITY)
    assert type(got) is errors.RemoteError
    assert (got.message, got.remoteType, got.errorId) == ("x", "builtins.KeyError", None)
    # To a peer that does not know it: dropped, the rest intact.
    new = errors.RemoteError("y", remoteType="builtins.ValueError", errorId="3f2a9c1e")
    old = OldRemoteError.__new__(OldRemoteError)
    old._setState(new.getStateToCopy())
    assert old._state() == {"message": "y", "remoteType": "builtins.ValueError"}
    assert "errorId" not in old.__dict__
    # Between two that know it: kept.
    back = jelly.unjelly(jelly.jelly(new, taster=_jelly.SECURITY), taster=_jelly.SECURITY)
    assert back == new and back.errorId == "3f2a9c1e"


# -- no memory addresses in any message


def assertFit(error: BaseException, *names: str) -> None:
    """One line, no address, and it names the thing."""
    text = str(error)
    assert " at 0x" not in text, text
    assert "\n" not in text, text
    for name in names:
        assert name in text, text
    if isinstance(error, errors.Error):
        assert " at 0x" not in error.message


@pytest_twisted.ensureDeferred
async def test_noAddressInTheErrorsACallCanGet(served):
    users = await served.remote.getManager(IUserManager)

    async def caught(d, kind):
        with pytest.raises(kind) as e:
            await d
        return e.value

    # A value that cannot travel, either way.
    assertFit(await caught(users.echo(Undeclared()), errors.SerializationError),
              "Undeclared")
    served.manager.users["u"] = Undeclared()
    assertFit(await caught(users.getUser("u"), errors.SerializationError),
              "Undeclared")
    served.manager.users["w"] = [1, {"k": reactor.callLater}]
    assertFit(await caught(users.getUser("w"), errors.SerializationError))
    # A name outside the interface, on the client and on the server.
    with pytest.raises(errors.NoSuchMethod) as e:
        users.notInInterface
    assertFit(e.value, "notInInterface")
    assertFit(await caught(users.callRemote("notInInterface"), errors.NoSuchMethod),
              "notInInterface", "tests.app.IUserManager")
    long = await caught(users._ref.callRemote("n" * 100_000), errors.NoSuchMethod)
    assertFit(long)
    assert len(str(long)) < 1000
    # Arguments that do not fit, on the client and on the server.
    assertFit(await caught(users.getUser(), errors.BadArguments), "getUser")
    assertFit(await caught(users._ref.callRemote("getUser", 1, 2), errors.BadArguments),
              "getUser(name)")
    # Application exceptions, with and without their message.
    assertFit(await caught(users.fail("<app.Thing object at 0x7f3a2c1d9e50>"),
                           errors.RemoteError), "builtins.RuntimeError")
    served.server.factory.errorDetail = "message"
    assertFit(await caught(users.fail("<app.Thing object at 0x7f3a2c1d9e50>"),
                           errors.RemoteError), "<app.Thing object>")
    # Interfaces that are not there, or not interfaces.
    assertFit(await caught(served.remote.getManager("nope.INope"),
                           errors.UnknownInterface), "nope.INope")
    assertFit(await caught(served.remote.getManager(Undeclared()), TypeError),
              "Undeclared")
    # Too big.
    assertFit(await caught(users.echo("x" * 700_000), errors.LimitExceeded))
    # A malformed call: a jelly reference to nothing.
    broker = users._ref.broker
    requestID = broker.newRequestID()
    answer = defer.Deferred()
    broker.waitingForAnswers[requestID] = answer
    broker.sendCall(b"message", requestID, users._ref.luid, b"echo", 1,
                    [b"list", [b"dereference", 7]], [b"dictionary"])
    assertFit(await caught(answer, errors.SerializationError))
    assert await users.echo("still serving") == "still serving"


def test_noAddressInLocalErrors():
    registry = Registry()
    manager = UserManager()
    with pytest.raises(errors.RegistrationError) as e:
        registry.register(IUserManager, Undeclared())
    assertFit(e.value, "Undeclared", "tests.app.IUserManager")
    with pytest.raises(errors.RegistrationError) as e:
        registry.register(Undeclared(), manager)
    assertFit(e.value, "Undeclared")
    registry.register(IUserManager, manager)
    with pytest.raises(errors.RegistrationError) as e:
        registry.register(IUserManager, UserManager())
    assertFit(e.value, "tests.app.UserManager offering tests.app.IUserManager")
    with pytest.raises(TypeError) as e:
        registerWrapper(Undeclared(), Wrapper)
    assertFit(e.value, "Undeclared")
    with pytest.raises(TypeError) as e:
        registerWrapper(IAdmin, Undeclared)
    assertFit(e.value, "Undeclared")


class Watched:
    """A client endpoint with a default repr; C{refused} fires at a failure."""

    def __init__(self, port: int) -> None:
        self.endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        self.refused: defer.Deferred = defer.Deferred()

    def connect(self, factory):
        def failed(f):
            if not self.refused.called:
                self.refused.callback(None)
            return f

        return self.endpoint.connect(factory).addErrback(failed)


@pytest_twisted.ensureDeferred
async def test_noAddressInAConnectionFailure():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    clock = task.Clock()
    endpoint = Watched(port)
    client = Client(endpoint, connectTimeout=1, clock=clock)
    try:
        d = client.getRegistry()
        await endpoint.refused
        clock.advance(1)
        with pytest.raises(errors.ConnectionFailed) as e:
            await d
        assertFit(e.value, "tests.test_errors.Watched")
    finally:
        await client.stop()


def test_reprsNamedInMessagesHaveNoAddress():
    manager = UserManager()
    assert repr(manager) == "<tests.app.UserManager offering tests.app.IUserManager>"
    wrapper = Wrapper(None, ("tests.app.IUserManager",), None)
    origin = Origin(wrapper, "getUser", (Undeclared(), "x" * 100_000, manager), {},
                    True)
    text = repr(origin)
    assert " at 0x" not in text and len(text) < 1000
    assert "getUser" in text and "Undeclared" in text


@pytest.mark.parametrize("value, shown", [
    (Undeclared(), "<tests.test_errors.Undeclared object>"),
    ("a\nb", "'a\\nb'"),
    (Undeclared, "<class 'tests.test_errors.Undeclared'>"),
    ("x" * 10_000, None),
])
def test_safeRepr(value, shown):
    text = errors._safeRepr(value)
    assert " at 0x" not in text and "\n" not in text and len(text) <= errors._MAX_TEXT
    if shown is not None:
        assert text == shown


def test_safeText():
    assert errors._safeText("one\n  two\r\nthree\n") == "one two three"
    assert errors._safeText("<f.G object at 0x7f3a2c1d9e50> at 0x1F") == \
        "<f.G object> at 0x1F"  # a byte offset is not an address
    assert len(errors._safeText("y" * 5000)) == errors._MAX_TEXT
    # A peer's words must not drive a terminal or forge a log line.
    assert errors._safeText("ok\x1b[2J\x07done\nforged") == "ok?[2J?done forged"

    class Unprintable(Exception):
        def __str__(self):
            raise ValueError("no")

    assert "Unprintable" in errors._safeText(Unprintable())


def test_errorMessagesLoseAddresses():
    error = errors.SerializationError("cannot send <a.B object at 0x7f3a2c1d9e50>")
    assert str(error) == error.message == "cannot send <a.B object>"
    assert error.args == ("cannot send <a.B object>",)


def test_equalErrorsHashAlike():
    """Errors compare by type and state; they hash by type and message, to match."""
    a, b = errors.LimitExceeded("too much", limit=3), errors.LimitExceeded("too much", limit=3)
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert errors.LimitExceeded("too much", limit=4) != a
    assert errors.Timeout("too much") != a and len({a, errors.Timeout("too much")}) == 2


@pytest_twisted.ensureDeferred
async def test_noSuchMethodNamesTheInterfaceAndTheNearestMethod(served):
    """
    On both sides a misspelt method names the interface (not an internal
    class such as the server's facet) and suggests the nearest method.
    """
    from tests.app import IUserManager

    users = await served.remote.getManager(IUserManager)
    with pytest.raises(errors.NoSuchMethod) as local:
        users.getUsr
    assert str(local.value) == ("tests.app.IUserManager has no method 'getUsr'; "
                                "did you mean 'getUser'?")
    # Past the wrapper's own check, as a peer without it would send it.
    with pytest.raises(errors.NoSuchMethod) as remote:
        await users._ref.callRemote("getUsr", "alice")
    assert str(remote.value) == ("tests.app.IUserManager has no method 'getUsr'; "
                                 "did you mean 'getUser'?")
    assert "Facet" not in str(remote.value)
