"""The local Registry, and one client function run against local and remote."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer
from zope.interface import Interface

from aurora import Registry, errors
from tests.app import IAdmin, IUserManager, User, UserManager


class INothing(Interface):
    pass


def test_registerRequiresAProvider():
    registry = Registry()
    with pytest.raises(errors.RegistrationError) as e:
        registry.register(IAdmin, UserManager())
    message = str(e.value)
    assert "tests.app.IAdmin" in message and "UserManager" in message


def test_registerRequiresAnInterface():
    with pytest.raises(errors.RegistrationError, match="not a zope.interface"):
        Registry().register(object, UserManager())


def test_registerTwiceNeedsReplace():
    registry = Registry()
    first, second = UserManager(), UserManager()
    registry.register(IUserManager, first)
    with pytest.raises(errors.RegistrationError, match="already registered"):
        registry.register(IUserManager, second)
    registry.register(IUserManager, second, replace=True)
    assert registry.lookup(IUserManager) is second


def test_unregister():
    registry = Registry()
    registry.register(IUserManager, UserManager())
    registry.unregister("tests.app.IUserManager")
    with pytest.raises(errors.UnknownInterface):
        registry.lookup(IUserManager)
    with pytest.raises(errors.UnknownInterface, match="tests.app.IUserManager"):
        registry.unregister(IUserManager)


@pytest_twisted.ensureDeferred
async def test_getManagerByInterfaceOrName():
    registry = Registry()
    manager = UserManager()
    registry.register(IUserManager, manager)
    assert await registry.getManager(IUserManager) is manager
    assert await registry.getManager("tests.app.IUserManager") is manager
    assert await registry.interfaces() == ["tests.app.IUserManager"]


@pytest_twisted.ensureDeferred
async def test_unknownInterfaceIsALookupErrorNamingIt():
    with pytest.raises(LookupError) as e:
        await Registry().getManager(INothing)
    assert isinstance(e.value, errors.UnknownInterface)
    assert "tests.test_registry.INothing" in str(e.value)
    assert e.value.interface == "tests.test_registry.INothing"


async def clientCode(registry):
    """Application code written once, for any registry.

    A local manager's method may answer synchronously and a wrapper's always
    answers with a Deferred: maybeDeferred takes both.
    """
    users = await registry.getManager(IUserManager)
    assert IUserManager.providedBy(users)
    alice = await defer.maybeDeferred(users.getUser, "alice")
    everyone = await defer.maybeDeferred(users.listUsers)
    return alice, [u.name for u in everyone], await registry.interfaces()


@pytest_twisted.ensureDeferred
async def test_sameClientCodeLocalAndRemote(served):
    local = await clientCode(served.registry)
    remote = await clientCode(served.remote)
    assert local == remote
    alice = remote[0]
    assert type(alice) is User and alice.email == "alice@example.org"


def test_publicNamesAreImportableFromAurora():
    import aurora
    from aurora import relay, remote

    assert aurora.Relay is relay.Relay and aurora.Wrapper is remote.Wrapper
    assert aurora.noReplay is remote.noReplay
    assert aurora.referenceError is remote.referenceError
    assert set(aurora.__all__) >= {"Relay", "Wrapper", "noReplay", "referenceError",
                                   "registerWrapper", "registerMirror"}


def test_managersIsAReadOnlyViewInRegistrationOrder():
    registry = Registry()
    users = UserManager()
    registry.register(IUserManager, users)
    view = registry.managers()
    registry.register(IAdmin, users.admin)
    assert list(view.items()) == [("tests.app.IUserManager", users),
                                  ("tests.app.IAdmin", users.admin)]
    with pytest.raises(TypeError):
        view["tests.app.IAdmin"] = None  # type: ignore[index]
    registry.unregister(IAdmin)
    assert list(view) == ["tests.app.IUserManager"]
