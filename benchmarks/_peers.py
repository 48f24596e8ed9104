"""
The peers aurora's echo call is compared with, Pyro5 and RPyC, each as a
server or a measuring client in a process of its own, on 127.0.0.1:

    python benchmarks/_peers.py serve pyro5 [--serializer serpent|marshal]
    python benchmarks/_peers.py serve rpyc
    python benchmarks/_peers.py seq pyro5 --port P [--serializer ...] \
                                          --seconds S --max-calls N
    python benchmarks/_peers.py seq rpyc --port P --seconds S --max-calls N

A server prints "listening on PORT" once it serves, then serves echo(value)
until killed.  A client warms up, then calls echo(1) one call at a time until
S seconds have passed or N calls were made, and prints one line of JSON:
calls, seconds, per_s, p50_us, p99_us, mean_us.

Each peer's package is imported only when that peer is used; if it is
missing, this exits with code 3 and says so on stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import socket
import sys
import time
from types import ModuleType
from typing import Any, Callable

# A connected client: its echo, and how to close it.
Client = tuple[Callable[[Any], Any], Callable[[], None]]

HOST = "127.0.0.1"
OBJECT_ID = "bench.echo"
WARMUP_CALLS = 200
NOT_INSTALLED = 3


def need(module: str, package: str) -> ModuleType:
    """Import C{module}, or exit with NOT_INSTALLED so the orchestrator can say so."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        print(f"{package} is not installed ({e})", file=sys.stderr)
        sys.exit(NOT_INSTALLED)


def listening(port: int) -> None:
    """The one line the orchestrator waits for before it starts a client."""
    print(f"listening on {port}", flush=True)


# -- Pyro5

def configurePyro(serializer: str) -> Any:
    """Pyro5's config, the same on both sides."""
    need("serpent", "serpent")
    Pyro5 = need("Pyro5.api", "Pyro5")
    # Pyro5 leaves Nagle on by default (SOCK_NODELAY = False); aurora turns
    # TCP_NODELAY on, so Pyro5 runs with it too.  The server sets it on the
    # listening socket, and Linux hands it on to the accepted ones.
    Pyro5.config.SOCK_NODELAY = True
    Pyro5.config.SERIALIZER = serializer
    return Pyro5


def servePyro(serializer: str) -> None:
    Pyro5 = configurePyro(serializer)
    # SERVERTYPE stays Pyro5's default, "thread": a thread pool, one thread
    # per connection.

    @Pyro5.expose
    class Echo:
        def echo(self, value: Any) -> Any:
            return value

    daemon = Pyro5.Daemon(host=HOST, port=0)
    daemon.register(Echo(), objectId=OBJECT_ID)
    listening(daemon.sock.getsockname()[1])
    daemon.requestLoop()


def connectPyro(port: int, serializer: str) -> Client:
    Pyro5 = configurePyro(serializer)
    proxy = Pyro5.Proxy(f"PYRO:{OBJECT_ID}@{HOST}:{port}")
    # Connect (and fetch the object's metadata) now, not inside the first call.
    proxy._pyroBind()
    return proxy.echo, proxy._pyroRelease


# -- RPyC

def serveRpyc() -> None:
    rpyc = need("rpyc", "rpyc")
    from rpyc.utils.server import ThreadedServer

    class EchoService(rpyc.Service):
        def exposed_echo(self, value: Any) -> Any:
            return value

    # The default protocol_config suffices: exposed_* is callable by default
    # and echo(1) passes an int, which goes by value.
    server = ThreadedServer(EchoService, hostname=HOST, port=0)
    # RPyC sets TCP_NODELAY nowhere by default, neither on accepted sockets
    # nor in rpyc.connect.  The listener is bound but not listening yet; set
    # it there and Linux hands it on to every accepted socket.
    server.listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    listening(server.port)  # bound in the constructor: the OS-chosen port
    server.start()


def connectRpyc(port: int) -> Client:
    rpyc = need("rpyc", "rpyc")
    from rpyc.core.stream import SocketStream

    # rpyc.connect offers no nodelay; build the stream ourselves to ask for it.
    conn = rpyc.connect_stream(SocketStream.connect(HOST, port, nodelay=True))
    # Look the method up once: conn.root.echo is itself a round trip (a
    # remote getattr, then a release of that netref), so calling through it
    # each time would time three messages, not one.
    return conn.root.echo, conn.close


# -- the measuring client

def sequential(echo: Callable[[Any], Any], seconds: float,
               maxCalls: int) -> dict[str, Any]:
    """Call echo(1) one call at a time, bounded in both time and count."""
    for _ in range(WARMUP_CALLS):
        echo(1)
    clock = time.perf_counter
    latencies: list[float] = []
    start = clock()
    deadline = start + seconds
    now = start
    while now < deadline and len(latencies) < maxCalls:
        before = now
        echo(1)
        now = clock()
        latencies.append(now - before)
    elapsed = now - start
    us = sorted(x * 1e6 for x in latencies)
    n = len(us)
    return {
        "calls": n,
        "seconds": elapsed,
        "per_s": n / elapsed if elapsed else 0.0,
        "p50_us": us[min(n - 1, int(n * 0.50))] if n else None,
        "p99_us": us[min(n - 1, int(n * 0.99))] if n else None,
        "mean_us": sum(us) / n if n else None,
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["serve", "seq"])
    parser.add_argument("peer", choices=["pyro5", "rpyc"])
    parser.add_argument("--serializer", choices=["serpent", "marshal"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--max-calls", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    if args.peer == "rpyc" and args.serializer:
        parser.error("--serializer is for pyro5 only")
    serializer = args.serializer or "serpent"

    if args.mode == "serve":
        if args.peer == "pyro5":
            servePyro(serializer)
        else:
            serveRpyc()
        return

    if args.port is None:
        parser.error("seq needs --port")
    if args.peer == "pyro5":
        echo, close = connectPyro(args.port, serializer)
    else:
        echo, close = connectRpyc(args.port)
    try:
        result = sequential(echo, args.seconds, args.max_calls)
    finally:
        close()
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
