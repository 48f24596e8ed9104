"""
Wrappers: the client's stand-ins for remote managers.

A L{Wrapper} provides the manager's interfaces and reflects each interface
method over C{callRemote}, with a deadline.  It holds its PB reference in one
attribute, so a reconnect can swap a new reference into the object the
application already holds.  A wrapper is itself a L{Manager}: sent to another
process, it is served like the original (that is what makes relays work).

L{wrap} builds the wrapper for a reference that arrives: the class
registered for one of its interfaces (L{registerWrapper}), else L{Wrapper},
providing the interfaces this process imports or has learned from its
server's descriptions (L{learnInterface}).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.spread import pb
from zope.interface import directlyProvidedBy
from zope.interface.interface import InterfaceClass
from zope.interface.interfaces import IInterface

from aurora import _schema, _types
from aurora._broker import Reference
from aurora._manager import Manager
from aurora.errors import (
    ConnectionLost,
    Error,
    NoSuchMethod,
    RemoteError,
    Timeout,
    _safeRepr,
    _safeText,
)

_wrapperClasses: dict[str, type[Wrapper]] = {}
_registered: dict[str, InterfaceClass] = {}
_MAX_LEARNED = 10_000  # interfaces one client learns from its server, at most


def registerWrapper(iface: InterfaceClass, wrapperClass: type[Wrapper]) -> None:
    """
    Use C{wrapperClass} (a L{Wrapper} subclass) for references to managers
    offering C{iface}; its own methods are answered locally, every other
    interface method goes over the wire.  This is the process's default; a
    client can have its own (C{Client(wrappers=...)}), which come first.
    """
    _checkWrapper(iface, wrapperClass)
    _wrapperClasses[iface.__identifier__] = wrapperClass
    _registered[iface.__identifier__] = iface


def _checkWrapper(iface: Any, wrapperClass: Any) -> None:
    if not IInterface.providedBy(iface):
        raise TypeError(f"{_safeRepr(iface)} is not a zope.interface Interface")
    if not (isinstance(wrapperClass, type) and issubclass(wrapperClass, Wrapper)):
        raise TypeError(
            f"{_safeRepr(wrapperClass)} is not a subclass of aurora.remote.Wrapper")


def wrapperTable(wrappers: Mapping[Any, type[Wrapper]] | None
                 ) -> dict[str, tuple[InterfaceClass, type[Wrapper]]]:
    """
    One client's own wrapper classes (C{{interface: class}}), checked, by
    interface name: what L{wrap} and L{_resolve} look at before the
    process's.
    """
    table = {}
    for iface, wrapperClass in (wrappers or {}).items():
        _checkWrapper(iface, wrapperClass)
        table[iface.__identifier__] = (iface, wrapperClass)
    return table


def _own(settings: Any) -> dict[str, tuple[InterfaceClass, type[Wrapper]]]:
    return getattr(settings, "wrappers", None) or {}


def registerMirror(original: type, mirror: type) -> None:
    """
    Build C{mirror} (a subclass of the Copyable or Model class C{original})
    whenever a value of C{original}'s type arrives in this process.
    """
    _types.registerMirror(original, mirror)


def _resolve(name: str, settings: Any) -> InterfaceClass | None:
    """An interface object for C{name}: registered, imported, or learned."""
    own = _own(settings).get(name)
    found = own[0] if own is not None else (
        _registered.get(name) or _schema.importedInterface(name))
    if found is None:
        learned = getattr(settings, "learned", None)
        found = learned.get(name) if learned is not None else None
    return found


def learnInterface(description: dict[str, Any], settings: Any) -> None:
    """
    Remember an interface described by the server a client connects to.

    Only a client learns, and only from its own server, into its own table:
    what a server's peers say about interfaces is never believed (a hostile
    client could otherwise redefine, for everyone, an interface a relay
    serves).  An interface this process imports always wins.
    """
    learned = getattr(settings, "learned", None)
    name = description["name"]
    if learned is None or name in _own(settings) or _registered.get(name) \
            or _schema.importedInterface(name):
        return
    known = learned.get(name)
    if known is not None and known.__dict__.get("_auroraDescription") == description:
        return  # described again, unchanged (each new connection does)
    if known is not None or len(learned) < _MAX_LEARNED:
        iface = _schema.synthesize(description)
        setattr(iface, "_auroraDescription", description)  # kept with what it describes
        learned[name] = iface


def wrap(ref: Reference, names: tuple[str, ...], settings: Any,
         descriptions: Sequence[Any] = ()) -> Wrapper:
    """The wrapper for a reference to a manager offering C{names}."""
    for description in descriptions:
        if isinstance(description, dict) and isinstance(description.get("name"), str):
            learnInterface(description, settings)
    own = _own(settings)
    cls = next((own[n][1] for n in names if n in own), None) or next(
        (_wrapperClasses[n] for n in names if n in _wrapperClasses), Wrapper)
    return cls(ref, names, settings)


def noReplay(method: Any) -> Any:
    """
    Mark an interface method whose results must not be fetched again after a
    reconnect (it creates something, or is not a lookup).  Mirrors and
    wrappers it returned then fail with L{StaleReference} after a reconnect::

        class ISessions(Interface):
            @noReplay
            def openSession(user):
                "A new session; calling it again would open another."
    """
    method.noReplay = True
    return method


def referenceError(obj: Any) -> Error | None:
    """
    Why a wrapper or model mirror does not work now: the error its calls fail
    with (or, for a mirror, why it no longer follows its origin), or None.

    L{UnknownInterface} and other errors from a replay clear themselves when a
    later reconnect succeeds; L{StaleReference} is final.  While the
    connection is down, calls fail with L{ConnectionLost} but this is None.
    """
    return obj.__dict__.get("_error")


class Wrapper(Manager):
    """
    Stands in for a remote manager.

    Provides the manager's interfaces (C{IUserManager.providedBy(users)}), and
    each interface method returns a Deferred.  C{callRemote(name, *args,
    _timeout=seconds, **kw)} calls with another deadline than the client's
    C{callTimeout} (C{None}: no deadline); the reflected methods accept
    C{_timeout=} too.

    The application keeps this object across reconnects: the client swaps
    the new connection's reference into C{_ref}.
    """

    _error: Error | None = None
    _origin: Any = None

    def __init__(self, ref: Reference | None, names: tuple[str, ...],
                 settings: Any) -> None:
        self._ref = ref
        self._names = tuple(names)
        self._settings = settings
        self._setInterfaces(
            [i for n in names if (i := _resolve(n, settings)) is not None])

    def _setInterfaces(self, ifaces: list[InterfaceClass]) -> None:
        # Interfaces the application declared on the instance are kept; ones
        # learned from an earlier connection give way to these.
        self._ifaces = ifaces
        kept = [i for i in directlyProvidedBy(self)
                if not _schema.isSynthesized(i) and not any(i is j for j in ifaces)]
        _schema.provide(self, *ifaces, *kept)
        self._methods = _schema.exposedMethods(self)

    def _provide(self, iface: InterfaceClass) -> None:
        if not any(i is iface for i in self._ifaces):
            self._setInterfaces([*self._ifaces, iface])

    def _exposed(self) -> dict[str, tuple[InterfaceClass, Any]]:
        return self._methods

    def _offered(self) -> list[Any]:
        # Every name the origin offered, even one this process only knows
        # by name; a synthesized interface describes it onward.
        return [i for n in self._names if (i := _resolve(n, self._settings)) is not None]

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        exposed = self._methods
        if name not in exposed:
            # Also what keeps hasattr() probes (jelly asks for "postUnjelly")
            # from turning into remote calls.
            near = difflib.get_close_matches(name, list(exposed), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise NoSuchMethod(
                f"{', '.join(self._names)} has no method {_safeRepr(name)}{hint}",
                interface=", ".join(self._names),
                method=name,
            )
        return functools.partial(self.callRemote, name)

    def callRemote(self, _name: str, *args: Any, **kw: Any) -> defer.Deferred:
        """Call C{_name} on the remote manager; a Deferred of the result."""
        timeout = kw.pop("_timeout", self._settings.callTimeout)
        d = self._call(_name, args, kw, timeout)
        tracker = self._settings.tracker
        if tracker is not None:
            d.addCallback(tracker.record, self, _name, args, kw)
        return d

    def _call(self, name: str, args: tuple, kw: dict[str, Any],
              timeout: float | None) -> defer.Deferred:
        where = f"{self._names[0] if self._names else 'manager'}.{name}"
        if self._error is not None:
            return defer.fail(self._error)
        entry = self._methods.get(name)
        ref = self._ref
        try:
            if entry is not None:
                _schema.checkArguments(entry[0], entry[1], args, kw)
            if ref is None:
                raise pb.DeadReferenceError("not connected yet")
            d = ref.callRemote(name, *args, **kw)
        except pb.DeadReferenceError:
            return defer.fail(_connectionLost(ref, where))
        except Error:
            return defer.fail()
        if timeout is not None:
            d.addTimeout(timeout, self._settings.clock,
                         onTimeoutCancel=functools.partial(_timedOut, where))
        d.addErrback(_translate, ref, where)
        return d

    def _rebind(self, other: Wrapper) -> None:
        """Take the reference of C{other}, a fresh wrapper for the same manager."""
        self._ref = other._ref
        self.__dict__.pop("_error", None)
        # What the server offers now, described afresh (it may have been
        # upgraded); interfaces the application gave are kept.
        self._names = other._names
        self._setInterfaces(list(other._ifaces))

    def jellyFor(self, jellier: Any) -> Any:
        if self._error is not None:
            raise self._error
        if self._ref is not None and jellier.invoker is self._ref.broker:
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


def _connectionLost(ref: Any, where: str) -> ConnectionLost:
    broker: Any = getattr(ref, "broker", None)
    peer = broker.peer if getattr(broker, "transport", None) is not None else "the server"
    return ConnectionLost(f"{where}: no connection to {peer}")


def _translate(failure: Failure, ref: Any, where: str) -> Failure:
    if isinstance(failure.value, Error):
        return failure
    if failure.check(pb.PBConnectionLost, pb.DeadReferenceError):
        return Failure(_connectionLost(ref, where))
    if isinstance(failure, pb.CopiedFailure):
        # An error PB itself raised on the far side (e.g. an unknown object),
        # or anything a stock PB server sends: its words, made one line.
        kind: Any = failure.type
        if isinstance(kind, bytes):
            kind = kind.decode("utf-8", "replace")
        remoteType = _safeText(kind, 200)
        return Failure(
            RemoteError(f"{where}: {remoteType}: {_safeText(failure.value)}",
                        remoteType=remoteType)
        )
    return failure

