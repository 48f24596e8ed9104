"""
Relays: publish a remote registry again, so a chain Server -> relay -> ... ->
client works, each hop reconnecting on its own.

A relay is a L{Client} of its upstream and a L{Server} of the registry the
client hands out, optionally beside local managers and behind an allow-list
(a L{CompositeRegistry}).  It needs no application code: it passes on the
Copyable, Model and Error types its upstream advertises as opaque objects,
without importing or instantiating anything of the application's::

    twistd -n registry --upstream tcp:origin.example:8789 \\
        --listen tcp:8790 [--allow myapp.interfaces.IUserManager]

(C{python -m aurora.relay ARGS} is a deprecated alias of C{twistd -n
--pidfile= registry ARGS}.)
"""

from __future__ import annotations

import shlex
import sys
import warnings
from typing import Any, Iterable

from pydispatch import dispatcher
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger
from zope.interface import implementer

from aurora import _schema, _types, signals
from aurora._types import TypeTable
from aurora.client import Client
from aurora.errors import ConnectionLost, UnknownInterface
from aurora.interfaces import IRegistry
from aurora.registry import Registry
from aurora.server import Server


@implementer(IRegistry)
class CompositeRegistry:
    """
    Local managers first, then the upstream registry's, restricted to the
    interfaces in C{allow} (all of them if None).

    What is not allowed is unknown here, exactly as if it did not exist, and
    C{interfaces()} lists what is offered: the local names and the allowed
    upstream names.
    """

    def __init__(self, upstream: Any = None, *, local: Registry | None = None,
                 allow: Iterable[str] | None = None,
                 upstreamClient: Client | None = None) -> None:
        self.local = local if local is not None else Registry()
        self.upstream = upstream
        self.allow = None if allow is None else frozenset(
            _schema.interfaceName(i) for i in allow)
        self._client = upstreamClient

    def _allowed(self, name: str) -> bool:
        return self.upstream is not None and (self.allow is None or name in self.allow)

    def offers(self, name: str) -> bool:
        """
        Whether a manager under C{name} may be used through this registry,
        however a client got it (the server asks this of every manager that
        crosses, not only of L{getManager}).
        """
        return name in self.local.managers() or self._allowed(name)

    async def _started(self) -> None:
        # Just after the relay starts, its first attempt to reach upstream
        # may be under way: wait for it (bounded).  Once an attempt has
        # failed, or later, an unreachable upstream is said at once.
        client = self._client
        if client is None:
            return
        await client.firstConnection()
        why = client.unreachable()
        if why is not None:
            raise ConnectionLost(f"this relay's upstream {why}")

    def getManager(self, iface: Any) -> defer.Deferred:
        return defer.ensureDeferred(self._getManager(iface))

    def interfaces(self) -> defer.Deferred:
        return defer.ensureDeferred(self._interfaces())

    async def _getManager(self, iface: Any) -> Any:
        name = _schema.interfaceName(iface)
        if name in self.local.managers():
            return await self.local.getManager(name)
        if self._allowed(name):
            await self._started()
            return await self.upstream.getManager(name)
        raise UnknownInterface(f"no manager is registered under {name}", interface=name)

    async def _interfaces(self) -> list[str]:
        names = set(await self.local.interfaces())
        if self.upstream is not None:
            await self._started()
            names.update(n for n in await self.upstream.interfaces() if self._allowed(n))
        return sorted(names)

    async def types(self) -> dict[str, Any]:
        """The types this relay passes on: learned from upstream once connected."""
        if self._client is None:
            return _types.advertised()
        await self._client.firstConnection()
        return self._client.typeTable.advertised()

    def relay(self) -> TypeTable | None:
        """
        This registry is served by a L{aurora.Server}: the types it accepts
        from its peers are those its upstream client accepts.
        """
        return self._client.typeTable if self._client is not None else None

    def __repr__(self) -> str:
        return (f"<aurora.relay.CompositeRegistry local={sorted(self.local.managers())} "
                f"allow={sorted(self.allow) if self.allow is not None else 'all'}>")


class Relay:
    """
    A client of C{upstream} whose registry a server publishes again.

    Once it has reached its upstream (and again whenever that changes after
    a reconnect) it logs what it relays, and warns, in one line, about each
    C{allow} name the upstream does not offer.

    @param upstream: the upstream server's client endpoint string or object.
    @param allow: dotted interface names to re-publish (default: all).
    @param local: a L{Registry} of this process's own managers, offered
        beside (and before) the upstream ones.
    @param clientOptions: passed to the upstream L{Client} (C{heartbeat},
        C{callTimeout}, ...); it accepts opaque types and asks for a high
        reference limit, since it funnels all downstream references.
    @param serverOptions: passed to the L{Server}.
    @ivar upstream: the upstream's endpoint string (or its object's repr),
        as the log names it.
    """

    log = Logger()

    def __init__(self, upstream: Any, *, allow: Iterable[str] | None = None,
                 local: Registry | None = None,
                 clientOptions: dict[str, Any] | None = None,
                 serverOptions: dict[str, Any] | None = None,
                 reactor: Any = None) -> None:
        options: dict[str, Any] = dict(opaque=True, referenceLimit=100_000,
                                       connectTimeout=None)
        options.update(clientOptions or {})
        self.upstream = upstream if isinstance(upstream, str) else repr(upstream)
        self.client = Client(upstream, reactor=reactor, **options)
        self.registry = CompositeRegistry(
            self.client.registry, local=local, allow=allow, upstreamClient=self.client)
        self.server = Server(self.registry, reactor=reactor, **(serverOptions or {}))
        self._said: tuple[list[str], list[str]] | None = None
        dispatcher.connect(self._upstreamConnected, signal=signals.connected,
                           sender=self.client)

    async def start(self, *endpoints: Any) -> list[IListeningPort]:
        """Connect upstream (in the background) and listen on C{endpoints}."""
        self.client.start()
        return [await self.server.listen(e) for e in endpoints]

    async def stop(self) -> None:
        try:
            dispatcher.disconnect(self._upstreamConnected, signal=signals.connected,
                                  sender=self.client)
        except dispatcher.errors.DispatcherKeyError:
            pass  # stopped before
        await self.server.stop()
        await self.client.stop()

    def _upstreamConnected(self, registry: Any) -> None:
        defer.ensureDeferred(self._sayWhatIsRelayed())

    async def _sayWhatIsRelayed(self) -> None:
        try:
            offered = await self.client.registry.interfaces()
        except (ConnectionLost, defer.TimeoutError):
            return  # lost again at once: the next connection says it
        local = set(self.registry.local.managers())
        relayed = sorted(local | {n for n in offered if self.registry._allowed(n)})
        missing = sorted(set(self.registry.allow or ()) - set(offered) - local)
        if (relayed, missing) == self._said:
            return  # the same as after the last connection
        self._said = (relayed, missing)
        self.log.info("relaying {interfaces} from upstream {upstream}",
                      interfaces=relayed, upstream=self.upstream)
        for name in missing:
            self.log.warn("allowed {interface}, which upstream {upstream} does not "
                          "offer (it offers: {offered})", interface=name,
                          upstream=self.upstream,
                          offered=", ".join(offered) or "nothing")


def main(reactor: Any, argv: list[str]) -> defer.Deferred:
    """
    Deprecated: run C{twistd -n registry ARGV} instead.  Runs the relay
    C{twistd registry} would (the same options) under C{reactor}, prints
    C{listening on PORT ...} once it listens, and never returns.
    """
    warnings.warn("aurora.relay.main is deprecated: run twistd -n registry "
                  "--upstream ... instead", DeprecationWarning, stacklevel=2)
    return defer.ensureDeferred(_serve(reactor, argv))


async def _serve(reactor: Any, argv: list[str]) -> None:
    from aurora import tap

    options = tap.Options()
    options.parseOptions(argv)
    service = tap.RegistryService(options, reactor=reactor)
    service.startService()
    await service._starting  # a failure to start ends the process, in one line
    print("listening on " + " ".join(str(p.getHost().port) for p in service.ports),
          flush=True)
    await defer.Deferred()  # until the process is stopped


def _deprecatedCommand(argv: list[str]) -> None:
    """C{python -m aurora.relay ARGS}: C{twistd -n --pidfile= registry ARGS}."""
    command = ["twistd", "-n", "--pidfile=", "registry", *argv]
    sys.stderr.write("DeprecationWarning: python -m aurora.relay is deprecated; "
                     f"run: {shlex.join(command)}\n")
    sys.stderr.flush()
    from twisted.scripts.twistd import run

    sys.argv = command
    run()


# `python -m aurora.relay` runs this module a second time, as __main__,
# after `import aurora` has imported it once; runpy warns about that in a
# line of its own.  The deprecation line above is the one to read.
warnings.filterwarnings("ignore", category=RuntimeWarning,
                        message=r"'aurora\.relay' found in sys\.modules")

if __name__ == "__main__":
    _deprecatedCommand(sys.argv[1:])
