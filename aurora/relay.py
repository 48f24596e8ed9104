"""
Relays: publish a remote registry again, so a chain Server -> relay -> ... ->
client works, each hop reconnecting on its own.

A relay is a L{Client} of its upstream and a L{Server} of the registry the
client hands out, optionally beside local managers and behind an allow-list
(a L{CompositeRegistry}).  It needs no application code: it passes on the
Copyable, Model and Error types its upstream advertises as opaque objects,
without importing or instantiating anything of the application's.

    python -m aurora.relay --upstream tcp:origin.example:8789 \\
        --listen tcp:8790 [--allow myapp.interfaces.IUserManager]
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Iterable

from twisted.internet import defer, task
from twisted.internet.interfaces import IListeningPort
from zope.interface import implementer

from aurora import _schema, _types
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
        return name in self.local._managers or self._allowed(name)

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
        if name in self.local._managers:
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
        if self._client is not None:
            await self._client.firstConnection()
        return _types.advertised()

    def __repr__(self) -> str:
        return (f"<aurora.relay.CompositeRegistry local={sorted(self.local._managers)} "
                f"allow={sorted(self.allow) if self.allow is not None else 'all'}>")


class Relay:
    """
    A client of C{upstream} whose registry a server publishes again.

    @param upstream: the upstream server's client endpoint string or object.
    @param allow: dotted interface names to re-publish (default: all).
    @param local: a L{Registry} of this process's own managers, offered
        beside (and before) the upstream ones.
    @param clientOptions: passed to the upstream L{Client} (C{heartbeat},
        C{callTimeout}, ...); it accepts opaque types and asks for a high
        reference limit, since it funnels all downstream references.
    @param serverOptions: passed to the L{Server}.
    """

    def __init__(self, upstream: Any, *, allow: Iterable[str] | None = None,
                 local: Registry | None = None,
                 clientOptions: dict[str, Any] | None = None,
                 serverOptions: dict[str, Any] | None = None,
                 reactor: Any = None) -> None:
        options = dict(opaque=True, referenceLimit=100_000, connectTimeout=None)
        options.update(clientOptions or {})
        self.client = Client(upstream, reactor=reactor, **options)
        self.registry = CompositeRegistry(
            self.client.registry, local=local, allow=allow, upstreamClient=self.client)
        self.server = Server(self.registry, reactor=reactor, **(serverOptions or {}))

    async def start(self, *endpoints: Any) -> list[IListeningPort]:
        """Connect upstream (in the background) and listen on C{endpoints}."""
        self.client.start()
        return [await self.server.listen(e) for e in endpoints]

    async def stop(self) -> None:
        await self.server.stop()
        await self.client.stop()


def _options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m aurora.relay",
        description="Re-publish an upstream aurora registry.")
    parser.add_argument("--upstream", required=True,
                        help="client endpoint of the upstream, e.g. tcp:host:8789")
    parser.add_argument("--listen", action="append", required=True,
                        help="server endpoint to listen on (repeatable)")
    parser.add_argument("--allow", action="append", default=None,
                        help="dotted interface name to re-publish (repeatable)")
    parser.add_argument("--heartbeat", type=float, default=5.0)
    return parser.parse_args(argv)


async def main(reactor: Any, argv: list[str]) -> None:
    args = _options(argv)
    relay = Relay(args.upstream, allow=args.allow,
                  clientOptions={"heartbeat": args.heartbeat}, reactor=reactor)
    ports = await relay.start(*args.listen)
    print("listening on " + " ".join(str(p.getHost().port) for p in ports), flush=True)
    await defer.Deferred()  # until the process is stopped


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1:])))
