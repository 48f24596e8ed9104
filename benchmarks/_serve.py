"""
A benchmark server in a process of its own, on 127.0.0.1:

    python benchmarks/_serve.py rawpb  [--port N]
    python benchmarks/_serve.py aurora [--port N] [--tracemalloc]
    python benchmarks/_serve.py relay --upstream PORT [--port N]

Prints "listening on PORT" once it serves, then serves until killed.  The
relay imports nothing of the benchmark's application: it passes its types on
opaquely, as a relay in production would.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

MAX_CONNECTIONS = 5000
# Every benchmark client comes from 127.0.0.1, anonymously: let it open
# thousands of connections, and let anonymous connections (the measuring
# clients, and each relay's link upstream) hold the references the 10,000
# wrapper and mirror figures need.
SERVER_OPTIONS = {
    "maxConnections": MAX_CONNECTIONS,
    "maxConnectionsPerAddress": MAX_CONNECTIONS,
    "grants": {None: {"referenceLimit": 100_000}},
}


def raiseFileLimit() -> None:
    """As many open files as the hard limit allows: 1,000 clients need them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY
                                                    else 65536, hard))


async def main(reactor, argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["rawpb", "aurora", "relay"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", type=int)
    parser.add_argument("--tracemalloc", action="store_true")
    args = parser.parse_args(argv)
    raiseFileLimit()
    if args.tracemalloc:
        tracemalloc.start()
    listen = f"tcp:{args.port}:interface=127.0.0.1:backlog=1024"
    if args.kind == "rawpb":
        from twisted.internet.endpoints import serverFromString
        from twisted.spread import pb

        from benchmarks._app import RawBench
        port = await serverFromString(reactor, listen).listen(
            pb.PBServerFactory(RawBench()))
    elif args.kind == "aurora":
        from aurora import Registry, Server
        from benchmarks._app import Bench, IBench
        registry = Registry()
        registry.register(IBench, Bench())
        port = await Server(registry, reactor=reactor, **SERVER_OPTIONS).listen(listen)
    else:
        from aurora.relay import Relay
        relay = Relay(f"tcp:127.0.0.1:{args.upstream}", reactor=reactor,
                      serverOptions=SERVER_OPTIONS)
        [port] = await relay.start(listen)
    print(f"listening on {port.getHost().port}", flush=True)
    await defer.Deferred()


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1:])))
