"""Managers, copies, models and errors over real TCP on 127.0.0.1."""

from __future__ import annotations

import datetime
import enum
import gc
import socket

import pytest
import pytest_twisted
from pydispatch import dispatcher
from twisted.internet import defer, task
from twisted.spread import jelly
from zope.interface import Interface

from aurora import Client, Copyable, errors, signals
from aurora import _handshake, _jelly
from aurora.remote import Wrapper, registerMirror, registerWrapper
from tests.app import (
    IAdmin,
    IUserManager,
    NotAllowed,
    User,
    UserModel,
)


class Recorder:
    """Collects C{changed} signals from one sender."""

    def __init__(self, sender):
        self.events = []
        self.waiting = []
        dispatcher.connect(self, signal=signals.changed, sender=sender, weak=False)
        self.sender = sender

    def __call__(self, sender, name, value, old):
        assert sender is self.sender
        self.events.append((name, value, old))
        waiting, self.waiting = self.waiting, []
        for d in waiting:
            d.callback(None)

    def next(self):
        d = defer.Deferred()
        self.waiting.append(d)
        return d

    def close(self):
        dispatcher.disconnect(self, signal=signals.changed, sender=self.sender, weak=False)


# -- managers


@pytest_twisted.ensureDeferred
async def test_wrapperProvidesTheInterfaceAndIsCached(served):
    users = await served.remote.getManager(IUserManager)
    assert IUserManager.providedBy(users)
    assert users is await served.remote.getManager("tests.app.IUserManager")
    assert await users.echo([1, "two", b"3", {4: (5.0, None)}]) == [
        1, "two", b"3", {4: (5.0, None)}
    ]


@pytest_twisted.ensureDeferred
async def test_asyncAndDeferredMethods(served):
    users = await served.remote.getManager(IUserManager)
    assert await users.asyncEcho("hi") == "hi"
    assert await users.slowEcho("later", 0) == "later"


@pytest_twisted.ensureDeferred
async def test_methodReturningAManager(served):
    users = await served.remote.getManager(IUserManager)
    admin = await users.getAdmin()
    assert isinstance(admin, Wrapper) and IAdmin.providedBy(admin)
    assert await admin.ping() == "pong"
    with pytest.raises(errors.NoSuchMethod, match="secret"):
        await admin.callRemote("secret")


@pytest_twisted.ensureDeferred
async def test_wrapperSentBackArrivesAsTheOriginal(served):
    users = await served.remote.getManager(IUserManager)
    admin = await users.getAdmin()
    # The server's echo returns what it received: its own Admin object,
    # which travels back as a reference again.
    again = await users.echo(admin)
    assert await again.ping() == "pong"


@pytest_twisted.ensureDeferred
async def test_registeredWrapperAnswersLocally(served):
    class IPinger(Interface):
        def ping():
            """pong"""

    class CachingAdmin(Wrapper):
        def localOnly(self):
            return "local"

    registerWrapper(IAdmin, CachingAdmin)
    try:
        users = await served.remote.getManager(IUserManager)
        admin = await users.getAdmin()
        assert type(admin) is CachingAdmin
        assert admin.localOnly() == "local"
        assert await admin.ping() == "pong"
    finally:
        from aurora import _wrapper

        del _wrapper._wrapperClasses["tests.app.IAdmin"]


# -- copies


@pytest_twisted.ensureDeferred
async def test_copyArrivesAsItsClassWithDeclaredFieldsOnly(served):
    served.manager.users["alice"].secret = "not declared"
    users = await served.remote.getManager(IUserManager)
    alice = await users.getUser("alice")
    assert type(alice) is User
    assert alice == User(name="alice", email="alice@example.org")
    assert not hasattr(alice, "secret")


@pytest_twisted.ensureDeferred
async def test_copySentOnAgain(served):
    users = await served.remote.getManager(IUserManager)
    alice = await users.getUser("alice")
    back = await users.echo(alice)
    assert back == alice and type(back) is User


@pytest_twisted.ensureDeferred
async def test_listOfCopies(served):
    users = await served.remote.getManager(IUserManager)
    everyone = await users.listUsers()
    assert [type(u) for u in everyone] == [User, User]
    assert [u.name for u in everyone] == ["alice", "bob"]


def test_copyConstructorAndEquality():
    assert User(name="a").email is None
    with pytest.raises(TypeError, match="nickname"):
        User(nickname="x")
    assert User(name="a") == User(name="a") != User(name="b")


class Evolving(Copyable):
    fields = ("a", "b")


def test_unknownIncomingFieldsDroppedMissingOnesNone():
    sexp = [Evolving.typeName.encode(), ["dictionary", [["unicode", b"a"], 1],
                                         [["unicode", b"zzz"], 2]]]
    got = jelly.unjelly(sexp, taster=_jelly.SECURITY)
    assert type(got) is Evolving
    assert (got.a, got.b) == (1, None)
    assert not hasattr(got, "zzz")


@pytest_twisted.ensureDeferred
async def test_registeredMirrorClassForACopy(served):
    class LocalUser(User):
        def display(self):
            return f"{self.name} <{self.email}>"

    registerMirror(User, LocalUser)
    try:
        users = await served.remote.getManager(IUserManager)
        alice = await users.getUser("alice")
        assert type(alice) is LocalUser and isinstance(alice, User)
        assert alice.display() == "alice <alice@example.org>"
    finally:
        from aurora import _types

        del _types._mirrors[User.typeName.encode()]


# -- models


@pytest_twisted.ensureDeferred
async def test_modelMirrorFollowsTheOriginal(served):
    users = await served.remote.getManager(IUserManager)
    mirror = await users.getModel("alice")
    assert type(mirror) is UserModel and mirror.online is False
    original = served.manager.models["alice"]
    local, remote = Recorder(original), Recorder(mirror)
    try:
        arrived = remote.next()
        await users.setOnline("alice", True)
        await arrived
        assert local.events == [("online", True, False)]
        assert remote.events == [("online", True, False)]
        assert mirror.online is True
    finally:
        local.close()
        remote.close()


@pytest_twisted.ensureDeferred
async def test_handlerThatNormalisesAValueLeavesMirrorsInTheFinalState(served):
    """
    A server-side handler that assigns the field again (normalising 50 to
    10) runs before the observers are sent anything: every mirror ends at
    the origin's final value, never at the intermediate one.
    """
    from pydispatch import dispatcher

    users = await served.remote.getManager(IUserManager)
    mirror = await users.getModel("alice")
    original = served.manager.models["alice"]

    def normalise(sender, name, value, **kw):
        if name == "name" and value == "ALICE":
            sender.name = "alice-normalised"

    dispatcher.connect(normalise, signal=signals.changed, sender=original, weak=False)
    remote = Recorder(mirror)
    try:
        arrived = remote.next()
        original.name = "ALICE"
        await arrived
        assert original.name == mirror.name == "alice-normalised"
        # A later change proves nothing stale was still on its way.
        arrived = remote.next()
        await users.setOnline("alice", True)
        await arrived
        assert remote.events == [("name", "alice-normalised", "alice"),
                                 ("online", True, False)]
    finally:
        dispatcher.disconnect(normalise, signal=signals.changed, sender=original,
                              weak=False)
        remote.close()


@pytest_twisted.ensureDeferred
async def test_modelChangeReachesTenClients(served):
    mirrors = []
    for _ in range(10):
        registry = await served.newClient().getRegistry()
        users = await registry.getManager(IUserManager)
        mirrors.append(await users.getModel("bob"))
    recorders = [Recorder(m) for m in mirrors]
    try:
        arrived = defer.gatherResults([r.next() for r in recorders])
        served.manager.models["bob"].online = True
        await arrived
        assert all(r.events == [("online", True, False)] for r in recorders)
        assert len(served.manager.models["bob"]._observers) == 10
    finally:
        for r in recorders:
            r.close()


@pytest_twisted.ensureDeferred
async def test_sameModelTwiceIsTheSameMirror(served):
    users = await served.remote.getManager(IUserManager)
    first = await users.getModel("alice")
    second = await users.getModel("alice")
    assert first is second
    models = await users.getModels(["alice", "bob"])
    assert models["alice"] is first and models["bob"].name == "bob"


@pytest_twisted.ensureDeferred
async def test_mirrorSentBackArrivesAsTheOriginal(served):
    users = await served.remote.getManager(IUserManager)
    mirror = await users.getModel("alice")
    assert await users.echo(mirror) is mirror


@pytest_twisted.ensureDeferred
async def test_mirrorIsReadOnly(served):
    users = await served.remote.getManager(IUserManager)
    mirror = await users.getModel("alice")
    with pytest.raises(errors.ReadOnlyMirror, match="online"):
        mirror.online = True
    assert mirror.online is False


@pytest_twisted.ensureDeferred
async def test_droppedMirrorIsNoLongerObserved(served):
    users = await served.remote.getManager(IUserManager)
    original = served.manager.models["alice"]
    mirror = await users.getModel("alice")
    assert len(original._observers) == 1
    stopped = defer.Deferred()
    original.stoppedObserving = lambda p, o: (
        type(original).stoppedObserving(original, p, o), stopped.callback(None)
    )
    try:
        del mirror
        gc.collect()
        await stopped
        assert original._observers == {}
    finally:
        del original.stoppedObserving


def test_changedOnlyOnRealChangeAndRobustToFailingReceivers():
    model = UserModel(name="x", online=False)

    def broken(**kw):
        raise RuntimeError("handler bug")

    dispatcher.connect(broken, signal=signals.changed, sender=model, weak=False)
    recorder = Recorder(model)
    try:
        model.online = False
        model.online = True
        model.online = True
        model.online = 1  # equal but of another type: a change
        assert recorder.events == [("online", True, False), ("online", 1, True)]
    finally:
        recorder.close()
        dispatcher.disconnect(broken, signal=signals.changed, sender=model, weak=False)


# -- errors


@pytest_twisted.ensureDeferred
async def test_unknownInterface(served):
    with pytest.raises(errors.UnknownInterface, match="nope.INope"):
        await served.remote.getManager("nope.INope")


@pytest_twisted.ensureDeferred
async def test_nameNotInTheInterface(served):
    users = await served.remote.getManager(IUserManager)
    with pytest.raises(AttributeError):
        users.notInInterface
    for name in ("notInInterface", "_private", "__init__", "jellyFor"):
        with pytest.raises(errors.NoSuchMethod) as e:
            await users.callRemote(name)
        assert name in str(e.value)
    assert await users.echo(1) == 1


@pytest_twisted.ensureDeferred
async def test_wrongArgumentCount(served):
    users = await served.remote.getManager(IUserManager)
    # Checked on the client first ...
    with pytest.raises(errors.BadArguments, match="getUser"):
        await users.getUser()
    # ... and on the server, whatever the client sends.
    with pytest.raises(errors.BadArguments, match=r"getUser\(name\)"):
        await users._ref.callRemote("getUser", "a", "b")
    assert await users.echo(2) == 2


@pytest_twisted.ensureDeferred
async def test_applicationErrorArrivesAsItsClass(served):
    users = await served.remote.getManager(IUserManager)
    with pytest.raises(NotAllowed) as e:
        await users.fail("app")
    assert e.value.who == "alice" and str(e.value) == "alice may not"


@pytest.mark.parametrize("kind, remoteType", [
    ("value", "builtins.ValueError"), ("deferred", "builtins.KeyError"),
])
@pytest_twisted.ensureDeferred
async def test_otherErrorsArriveAsRemoteError(served, kind, remoteType):
    users = await served.remote.getManager(IUserManager)
    with pytest.raises(errors.RemoteError) as e:
        await users.fail(kind)
    assert e.value.remoteType == remoteType
    assert isinstance(e.value.remoteType, str)
    assert "Traceback" not in str(e.value)
    assert await users.echo(3) == 3


class Color(enum.Enum):
    RED = 1


class Undeclared:
    pass


@pytest.mark.parametrize("value, words", [
    (Color.RED, "Color"),
    (Undeclared(), "Undeclared"),
    (datetime.datetime.now(datetime.timezone.utc), "timezone-aware"),
])
@pytest_twisted.ensureDeferred
async def test_unsendableArgument(served, value, words):
    users = await served.remote.getManager(IUserManager)
    with pytest.raises(errors.SerializationError, match=words):
        await users.echo(value)
    assert await users.echo(4) == 4


@pytest_twisted.ensureDeferred
async def test_unsendableResult(served):
    users = await served.remote.getManager(IUserManager)
    served.manager.users["carol"] = Color.RED
    with pytest.raises(errors.SerializationError, match="Color"):
        await users.getUser("carol")
    assert await users.echo(5) == 5


@pytest_twisted.ensureDeferred
async def test_oversizeArgumentAndResult(served):
    users = await served.remote.getManager(IUserManager)
    with pytest.raises(errors.LimitExceeded, match="640|655360"):
        await users.echo("x" * 700_000)
    served.manager.users["big"] = "y" * 700_000
    with pytest.raises(errors.LimitExceeded):
        await users.getUser("big")
    assert len(await users.echo("z" * 600_000)) == 600_000


@pytest_twisted.ensureDeferred
async def test_callDeadline(served):
    clock = task.Clock()
    client = served.newClient(clock=clock, callTimeout=5)
    users = await (await client.getRegistry()).getManager(IUserManager)
    served.manager.clock = clock
    slow = users.slowEcho("late", 10)
    quicker = users.slowEcho("late", 10, _timeout=2)
    await users.echo(0)  # both requests have reached the server
    clock.advance(2)
    with pytest.raises(errors.Timeout, match="slowEcho.*2 s"):
        await quicker
    clock.advance(3)
    with pytest.raises(defer.TimeoutError):
        await slow
    clock.advance(5)  # let the server's deferLater finish


@pytest.mark.parametrize("theirs", [
    {"protocol": 99, "aurora": "9"},
    # aurora 0.1.0 before protocol 2: it raised its limits with hello
    {"protocol": 1, "aurora": "0.1.0"},
])
@pytest_twisted.ensureDeferred
async def test_incompatibleProtocolVersion(served, monkeypatch, theirs):
    """A peer of another protocol version fails with both versions named."""
    monkeypatch.setattr(_handshake, "versionInfo", lambda: theirs)
    client = served.newClient()
    with pytest.raises(errors.IncompatibleVersion) as e:
        await client.getRegistry()
    assert f"protocol {theirs['protocol']} (aurora {theirs['aurora']})" in str(e.value)
    assert f"protocol {_handshake.PROTOCOL_VERSION}" in str(e.value)
    assert (e.value.local, e.value.remote) == (_handshake.PROTOCOL_VERSION, theirs["protocol"])


@pytest_twisted.ensureDeferred
async def test_noConnectionFailsInTime():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    client = Client(f"tcp:127.0.0.1:{port}", connectTimeout=0.3)
    try:
        with pytest.raises(errors.ConnectionFailed) as e:
            await client.getRegistry()
        assert f"127.0.0.1:{port}" in str(e.value)
        assert "refused" in str(e.value).lower()
    finally:
        await client.stop()


@pytest_twisted.ensureDeferred
async def test_otherClientsUnaffectedByErrors(served):
    other = await (await served.newClient().getRegistry()).getManager(IUserManager)
    users = await served.remote.getManager(IUserManager)
    with pytest.raises(errors.RemoteError):
        await users.fail("value")
    with pytest.raises(errors.SerializationError):
        await users.echo(Color.RED)
    assert await other.echo("fine") == "fine"


@pytest_twisted.ensureDeferred
async def test_stopSendsDisconnectedOnce(served):
    """The README says so: closing the client is a disconnect its handlers hear."""
    from tests.helpers import SignalLog

    client = served.newClient(heartbeat=None)
    await client.getRegistry()
    log = SignalLog(signals.disconnected, client)
    try:
        await client.stop()
        assert log.events == [{}]
    finally:
        log.close()


class Item(Copyable):
    fields = ("top",)


class Order(Copyable):
    fields = ("lines",)

    class Item(Copyable):  # the same __name__ as the module's Item
        fields = ("nested",)


@pytest_twisted.ensureDeferred
async def test_nestedClassIsItsOwnType(served):
    """
    A type name is the module and qualified name: a nested Order.Item does
    not replace the module's top-level Item, and both arrive as themselves.
    """
    assert Item.typeName == "tests.test_core.Item"
    assert Order.Item.typeName == "tests.test_core.Order.Item"
    users = await served.remote.getManager(IUserManager)
    top, nested = await users.echo([Item(top=1), Order.Item(nested=2)])
    assert type(top) is Item and top.top == 1
    assert type(nested) is Order.Item and nested.nested == 2


def test_aTypeNameTakenByAnotherClassIsRefused():
    with pytest.raises(ValueError, match="already declared by tests.test_core.Item"):
        class Impostor(Copyable):
            typeName = "tests.test_core.Item"
            fields = ("x",)
