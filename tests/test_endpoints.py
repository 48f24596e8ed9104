"""
State per endpoint, not per process: what one client learns from its server
(opaque types, interface descriptions) and the wrapper classes it is given
are its own.  Two clients of two different servers in one process do not see
each other's types; a server never accepts what a client of the same
process learned.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer
from zope.interface import Interface, implementer

from aurora import Client, Registry, Server, errors
from aurora.remote import Wrapper, registerWrapper
from aurora.remoteable import Manager, OpaqueCopy
from tests.app import IUserManager, UserManager

FAR = "far.away.OnlyHere"  # a type no module of this process declares


def farValue(x: int) -> OpaqueCopy:
    """A value of type FAR, as a relay holds one (its class is not imported)."""
    value = OpaqueCopy.__new__(OpaqueCopy)
    value.__dict__.update(typeName=FAR, _fields=("x",), keyField=None, x=x)
    return value


class IFar(Interface):
    def get() -> object:
        """A value of a type this process never declared."""


@implementer(IFar)
class Far(Manager):
    def get(self) -> OpaqueCopy:
        return farValue(7)


class Advertising(Registry):
    """A registry whose server advertises FAR, as a relay's would."""

    def types(self) -> defer.Deferred:
        return defer.succeed({FAR: {"kind": "copy", "fields": ["x"], "keyField": None}})


async def serve(registry: Registry, stack: list) -> int:
    registry.register(IFar, Far())
    server = Server(registry)
    stack.append(server.stop)
    port = await server.listen("tcp:0:interface=127.0.0.1")
    return port.getHost().port


def connect(port: int, stack: list, **kw) -> Client:
    client = Client(f"tcp:127.0.0.1:{port}", **kw)
    stack.append(client.stop)
    return client


@pytest_twisted.async_yield_fixture()
async def stack():
    closers: list = []
    yield closers
    for close in reversed(closers):
        await close()


@pytest_twisted.ensureDeferred
async def test_opaqueTypesBelongToTheClientThatLearnedThem(stack):
    a = connect(await serve(Advertising(), stack), stack, opaque=True)
    got = await (await (await a.getRegistry()).getManager(IFar)).get()
    assert isinstance(got, OpaqueCopy) and got.typeName == FAR and got.x == 7
    assert FAR in a.typeTable.advertised()

    # Another client of the process, of a server that does not advertise
    # FAR, connected after the first one learned it: FAR is not its type.
    b = connect(await serve(Registry(), stack), stack, opaque=True)
    far = await (await b.getRegistry()).getManager(IFar)
    with pytest.raises(errors.SerializationError, match="not declared"):
        await far.get()
    assert FAR not in b.typeTable.advertised()
    assert FAR not in await (await b.getRegistry()).types()


@pytest_twisted.ensureDeferred
async def test_aServerNeverAcceptsWhatAClientOfItsProcessLearned(stack):
    a = connect(await serve(Advertising(), stack), stack, opaque=True)
    await (await a.getRegistry()).getManager(IFar)  # connected: FAR learned
    assert FAR in a.typeTable.advertised()

    registry = Registry()
    registry.register(IUserManager, UserManager())
    port = await serve(registry, stack)
    users = await (await connect(port, stack).getRegistry()).getManager(IUserManager)
    with pytest.raises(errors.SerializationError, match="undeclared type"):
        await users.echo(farValue(1))


@pytest_twisted.ensureDeferred
async def test_aRelayServerAcceptsItsUpstreamClientsTypes(stack):
    upstream = connect(await serve(Advertising(), stack), stack)
    relay = Server(await upstream.getRegistry())  # the bare relay
    stack.append(relay.stop)
    port = (await relay.listen("tcp:0:interface=127.0.0.1")).getHost().port
    assert relay.factory.security.types is upstream.typeTable

    downstream = connect(port, stack, opaque=True)
    far = await (await downstream.getRegistry()).getManager(IFar)
    got = await far.get()
    assert got.typeName == FAR and got.x == 7


@pytest_twisted.ensureDeferred
async def test_wrapperClassesPerClientBeforeTheProcessDefault(stack):
    class Mine(Wrapper):
        pass

    class ProcessWide(Wrapper):
        pass

    registry = Registry()
    port = await serve(registry, stack)
    own = connect(port, stack, wrappers={IFar: Mine})
    other = connect(port, stack)
    assert type(await (await own.getRegistry()).getManager(IFar)) is Mine
    assert type(await (await other.getRegistry()).getManager(IFar)) is Wrapper

    registerWrapper(IFar, ProcessWide)
    try:
        third = connect(port, stack)
        assert type(await (await third.getRegistry()).getManager(IFar)) is ProcessWide
        fourth = connect(port, stack, wrappers={IFar: Mine})
        assert type(await (await fourth.getRegistry()).getManager(IFar)) is Mine
    finally:
        from aurora import _wrapper

        del _wrapper._wrapperClasses[IFar.__identifier__]
        del _wrapper._registered[IFar.__identifier__]


def test_wrappersMustBeWrappersOfInterfaces():
    with pytest.raises(TypeError, match="not a zope.interface Interface"):
        Client("tcp:127.0.0.1:1", wrappers={object: Wrapper})
    with pytest.raises(TypeError, match="not a subclass of aurora.remote.Wrapper"):
        Client("tcp:127.0.0.1:1", wrappers={IFar: object})
