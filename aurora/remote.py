"""
The client side: wrappers that stand in for remote managers, and the remote
registry that hands them out.

A L{Wrapper} provides the manager's interfaces and reflects each interface
method over C{callRemote}, with a deadline.  It holds its PB reference in one
attribute, so a reconnect can swap a new reference into the object the
application already holds.  A wrapper is itself a L{Manager}: sent to another
process, it is served like the original (that is what makes relays work).
"""

from __future__ import annotations

import functools
import weakref
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.python.reflect import qual
from twisted.spread import pb
from zope.interface import alsoProvides, implementer
from zope.interface.interface import InterfaceClass
from zope.interface.interfaces import IInterface

from aurora import _schema, _types
from aurora.errors import (
    ConnectionLost,
    Error,
    NoSuchMethod,
    RemoteError,
    Timeout,
)
from aurora.interfaces import IRegistry
from aurora.remoteable import Manager

_wrapperClasses: dict[str, type[Wrapper]] = {}
_learned: dict[str, InterfaceClass] = {}


def registerWrapper(iface: InterfaceClass, wrapperClass: type[Wrapper]) -> None:
    """
    Use C{wrapperClass} (a L{Wrapper} subclass) for references to managers
    offering C{iface}; its own methods are answered locally, every other
    interface method goes over the wire.
    """
    if not IInterface.providedBy(iface):
        raise TypeError(f"{iface!r} is not a zope.interface Interface")
    if not (isinstance(wrapperClass, type) and issubclass(wrapperClass, Wrapper)):
        raise TypeError(f"{wrapperClass!r} is not a subclass of aurora.remote.Wrapper")
    _wrapperClasses[iface.__identifier__] = wrapperClass
    _learned.setdefault(iface.__identifier__, iface)


def registerMirror(original: type, mirror: type) -> None:
    """
    Build C{mirror} (a subclass of the Copyable or Model class C{original})
    whenever a value of C{original}'s type arrives in this process.
    """
    _types.registerMirror(original, mirror)


def _resolve(name: str) -> InterfaceClass | None:
    return _learned.get(name) or _schema.importedInterface(name)


def learnInterface(description: dict[str, Any]) -> InterfaceClass:
    """Remember an interface described by a server, synthesizing it if needed."""
    name = description["name"]
    iface = _resolve(name)
    if iface is None:
        iface = _learned[name] = _schema.synthesize(description)
    return iface


def wrap(ref: pb.RemoteReference, names: tuple[str, ...]) -> Wrapper:
    """The wrapper for a reference to a manager offering C{names}."""
    cls = next((_wrapperClasses[n] for n in names if n in _wrapperClasses), Wrapper)
    return cls(ref, names)


class Wrapper(Manager):
    """
    Stands in for a remote manager.

    Provides the manager's interfaces (C{IUserManager.providedBy(users)}), and
    each interface method returns a Deferred.  C{callRemote(name, *args,
    _timeout=seconds, **kw)} calls with another deadline than the client's
    C{callTimeout} (C{None}: no deadline); the reflected methods accept
    C{_timeout=} too.
    """

    def __init__(self, ref: pb.RemoteReference, names: tuple[str, ...]) -> None:
        self._ref = ref
        self._names = tuple(names)
        known = [i for i in map(_resolve, names) if i is not None]
        if known:
            alsoProvides(self, *known)

    def _provide(self, iface: InterfaceClass) -> None:
        if not iface.providedBy(self):
            alsoProvides(self, iface)

    def _interfaceNames(self) -> list[bytes]:
        return [n.encode("utf-8") for n in self._names]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in _schema.exposedMethods(self):
            # Also what keeps hasattr() probes (jelly asks for "postUnjelly")
            # from turning into remote calls.
            raise NoSuchMethod(
                f"{', '.join(self._names)} has no method {name!r}",
                interface=", ".join(self._names),
                method=name,
            )
        return functools.partial(self.callRemote, name)

    def callRemote(self, _name: str, *args: Any, **kw: Any) -> defer.Deferred:
        """Call C{_name} on the remote manager; a Deferred of the result."""
        settings = self._ref.broker.factory
        timeout = kw.pop("_timeout", settings.callTimeout)
        where = f"{self._names[0] if self._names else 'manager'}.{_name}"
        entry = _schema.exposedMethods(self).get(_name)
        try:
            if entry is not None:
                _schema.checkArguments(entry[0], entry[1], args, kw)
            d = self._ref.callRemote(_name, *args, **kw)
        except pb.DeadReferenceError:
            return defer.fail(_connectionLost(self._ref.broker, where))
        except Error:
            return defer.fail()
        if timeout is not None:
            d.addTimeout(timeout, settings.clock,
                         onTimeoutCancel=functools.partial(_timedOut, where))
        d.addErrback(_translate, self._ref.broker, where)
        return d

    def jellyFor(self, jellier: Any) -> Any:
        if jellier.invoker is not None and jellier.invoker is self._ref.broker:
            # Going back to where it came from: the peer gets its own object.
            return self._ref.jellyFor(jellier)
        return super().jellyFor(jellier)

    def __repr__(self) -> str:
        return f"<aurora wrapper for {', '.join(self._names) or 'a manager'}>"


def _timedOut(where: str, result: Any, seconds: float) -> Failure:
    return Failure(
        Timeout(
            f"{where} got no answer within {seconds} s; the call may still "
            "complete on the server",
            seconds=seconds,
        )
    )


def _connectionLost(broker: Any, where: str) -> ConnectionLost:
    peer = getattr(getattr(broker, "transport", None), "getPeer", lambda: "the server")()
    return ConnectionLost(f"{where}: the connection to {peer} is lost")


def _translate(failure: Failure, broker: Any, where: str) -> Failure:
    if isinstance(failure.value, Error):
        return failure
    if failure.check(pb.PBConnectionLost, pb.DeadReferenceError):
        return Failure(_connectionLost(broker, where))
    if isinstance(failure, pb.CopiedFailure):
        # An error PB itself raised on the far side (e.g. an unknown object).
        remoteType = failure.type
        if isinstance(remoteType, bytes):
            remoteType = remoteType.decode("utf-8", "replace")
        return Failure(
            RemoteError(f"{where}: {remoteType}: {failure.value}",
                        remoteType=str(remoteType))
        )
    return failure


@implementer(IRegistry)
class Registry:
    """
    A registry on the far side of a connection: the same C{getManager} and
    C{interfaces} as a local L{aurora.Registry}.

    Asking twice for one interface gives the same wrapper object, for as long
    as the application holds it.  A remote registry can itself be served by
    an L{aurora.Server}: that makes a relay.
    """

    def __init__(self, root: Wrapper) -> None:
        self._root = root
        self._wrappers: weakref.WeakValueDictionary[str, Wrapper] = (
            weakref.WeakValueDictionary()
        )

    def getManager(self, iface: Any) -> defer.Deferred:
        try:
            name = _schema.interfaceName(iface)
        except TypeError:
            return defer.fail()
        wrapper = self._wrappers.get(name)
        if wrapper is not None:
            return defer.succeed(wrapper)

        def got(answer: Any) -> Wrapper:
            manager, descriptions = answer
            if not isinstance(manager, Wrapper):
                raise RemoteError(
                    f"the server answered getManager({name!r}) with "
                    f"{qual(type(manager))}, not a manager reference",
                    remoteType=qual(type(manager)),
                )
            for description in descriptions.values():
                manager._provide(learnInterface(description))
            if not isinstance(iface, str):
                manager._provide(iface)
            # Two concurrent requests: keep the first wrapper handed out.
            return self._wrappers.setdefault(name, manager)

        return self._root.callRemote("getManager", name).addCallback(got)

    def interfaces(self) -> defer.Deferred:
        return self._root.callRemote("interfaces")

    def __repr__(self) -> str:
        return f"<aurora.remote.Registry via {self._root._ref.broker.transport.getPeer()}>"


__all__ = [
    "Registry",
    "Wrapper",
    "registerMirror",
    "registerWrapper",
]
