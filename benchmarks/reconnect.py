"""
Reconnect figures (printed, not asserted):

- the median over N server restarts (SIGKILL, restart on the same port) of
  the time from the new server listening to the first successful call
  through a wrapper the application held before, with the default settings
  and with heartbeat=0.5;
- the time from a silent partition (a proxy that drops bytes) to the
  client's `disconnected` signal, with heartbeat=0.5.

    python benchmarks/reconnect.py [--restarts 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from aurora import Client, Registry, Server, signals  # noqa: E402
from tests.app import IUserManager, UserManager  # noqa: E402
from tests.helpers import PartitionProxy, ServerProcess, SignalLog, forgetSenders  # noqa: E402


async def restarts(reactor, n: int, **clientOptions) -> list[float]:
    server = await ServerProcess.start()
    client = Client(f"tcp:127.0.0.1:{server.port}", **clientOptions)
    lost = SignalLog(signals.disconnected, client)
    times = []
    try:
        users = await (await client.getRegistry()).getManager(IUserManager)
        await users.echo(0)
        for _ in range(n):
            gone = lost.next()
            await server.kill()
            await gone
            server = await ServerProcess.start(server.port)
            listening = reactor.seconds()
            await client.whenConnected()
            await users.echo(1)
            times.append(reactor.seconds() - listening)
    finally:
        lost.close()
        await client.stop()
        await server.kill()
    return times


async def partition(reactor, n: int, heartbeat: float) -> list[float]:
    registry = Registry()
    registry.register(IUserManager, UserManager())
    server = Server(registry)
    port = (await server.listen("tcp:0:interface=127.0.0.1")).getHost().port
    proxy = PartitionProxy(port)
    client = Client(f"tcp:127.0.0.1:{await proxy.start()}", heartbeat=heartbeat,
                    reconnectDelay=0.05, maxReconnectDelay=0.2)
    lost = SignalLog(signals.disconnected, client)
    times = []
    try:
        await client.getRegistry()
        for _ in range(n):
            gone = lost.next()
            proxy.partitioned = True
            started = reactor.seconds()
            await gone
            times.append(reactor.seconds() - started)
            proxy.partitioned = False
            await client.whenConnected()
    finally:
        lost.close()
        await client.stop()
        await proxy.stop()
        await server.stop()
    return times


def summary(label: str, times: list[float]) -> None:
    ms = sorted(t * 1000 for t in times)
    print(f"{label:58s} median {statistics.median(ms):7.1f} ms   "
          f"min {ms[0]:7.1f}   max {ms[-1]:7.1f}   (n={len(ms)})")


async def main(reactor, argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--restarts", type=int, default=10)
    args = parser.parse_args(argv)
    summary("restart -> first call through old wrapper (defaults)",
            await restarts(reactor, args.restarts))
    summary("restart -> first call through old wrapper (heartbeat=0.5)",
            await restarts(reactor, args.restarts, heartbeat=0.5))
    summary("silent partition -> disconnected (heartbeat=0.5)",
            await partition(reactor, args.restarts, 0.5))


if __name__ == "__main__":
    try:
        task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1:])))
    finally:
        forgetSenders()
