"""
The client side, as the application sees it: the remote L{Registry} a
L{aurora.Client} hands out, and the wrappers it hands out in turn.

This module is the public entry point; the wrapper machinery lives in
L{aurora._wrapper}: L{Wrapper}, L{registerWrapper}, L{registerMirror},
L{noReplay} and L{referenceError}, and L{wrap} and L{learnInterface}, which
build a wrapper for a reference that arrives.  All are importable from here.
"""

from __future__ import annotations

import weakref
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.python.reflect import qual
from zope.interface import implementer

from aurora import _schema, _types
from aurora._types import TypeTable
from aurora._wrapper import (
    Wrapper,
    learnInterface,
    noReplay,
    referenceError,
    registerMirror,
    registerWrapper,
    wrap,
)
from aurora.errors import ConnectionLost, RemoteError, _safeRepr
from aurora.interfaces import IRegistry


@implementer(IRegistry)
class Registry:
    """
    A registry on the far side of a connection: the same C{getManager} and
    C{interfaces} as a local L{aurora.Registry}.

    Asking twice for one interface gives the same wrapper object, for as long
    as the application holds it.  A remote registry can itself be served by
    an L{aurora.Server}: that makes a relay, which passes on the types its
    upstream advertises without importing them (see L{relay}).

    @param source: what L{relay} and L{types} ask (the L{aurora.Client} this
        registry belongs to): C{relayTypes()}, and C{relayedTypes()}, a
        Deferred of the types it can pass on.
    """

    def __init__(self, root: Wrapper, source: Any = None) -> None:
        self._root = root
        self._source = source
        self._wrappers: weakref.WeakValueDictionary[str, Wrapper] = (
            weakref.WeakValueDictionary()
        )
        # Interface name -> the callers waiting on the request for it under way.
        self._asking: dict[str, list[tuple[defer.Deferred, Any]]] = {}

    def relay(self) -> TypeTable | None:
        """
        This registry is served by a L{aurora.Server} (a Server asks this
        itself): accept the Copyable, Model and Error types the upstream
        advertises as opaque objects, so that a process without the
        application's modules can pass them on.
        """
        if self._source is None:
            return None
        return self._source.relayTypes()

    def types(self) -> defer.Deferred:
        """The types this registry's server can pass on (see L{relay})."""
        if self._source is None:
            return defer.succeed(_types.advertised())
        return defer.ensureDeferred(self._source.relayedTypes())

    def getManager(self, iface: Any) -> defer.Deferred:
        try:
            name = _schema.interfaceName(iface)
        except TypeError:
            return defer.fail()
        wrapper = self._wrappers.get(name)
        if wrapper is not None and wrapper._error is None:
            return defer.succeed(wrapper)

        def got(manager: Any) -> Wrapper:
            if not isinstance(manager, Wrapper):
                raise RemoteError(
                    f"the server answered getManager({_safeRepr(name)}) with "
                    f"{qual(type(manager))}, not a manager reference",
                    remoteType=qual(type(manager)),
                )
            if not isinstance(iface, str):
                manager._provide(iface)
            known = self._wrappers.get(name)
            if known is None:
                self._wrappers[name] = manager
                return manager
            # Asked again (concurrently, or after it was gone): the
            # application keeps the object it may already hold.
            known._rebind(manager)
            return known

        # Callers asking for the same interface while a request for it is
        # under way share that request: one round trip, one wrapper.
        waiting = self._asking.get(name)
        if waiting is not None:
            d: defer.Deferred = defer.Deferred()
            waiting.append((d, iface))
            return d
        waiting = self._asking[name] = []

        def settle(result: Any) -> Any:
            del self._asking[name]
            for d, each in waiting:
                if isinstance(result, Failure):
                    d.errback(result)
                else:
                    if not isinstance(each, str):
                        result._provide(each)
                    d.callback(result)
            return result

        return self._whenReachable(
            lambda: self._root.callRemote("getManager", name)).addCallback(got).addBoth(settle)

    def interfaces(self) -> defer.Deferred:
        return self._whenReachable(lambda: self._root.callRemote("interfaces"))

    def _whenReachable(self, call: Any) -> defer.Deferred:
        """
        C{call()}, after the source's very first connection attempt if it is
        still in progress (a relay just started); at once with
        L{ConnectionLost} naming why if the server is known unreachable.
        """
        source = self._source
        if source is None or source.connected:
            return call()

        async def first() -> Any:
            await source.firstConnection()
            why = source.unreachable()
            if why is not None:
                raise ConnectionLost(why)
            return await call()

        return defer.ensureDeferred(first())

    def __repr__(self) -> str:
        return f"<aurora.remote.Registry {sorted(self._wrappers)}>"


__all__ = [
    "Registry",
    "Wrapper",
    "learnInterface",
    "noReplay",
    "referenceError",
    "registerMirror",
    "registerWrapper",
    "wrap",
]
