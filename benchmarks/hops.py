"""
Per-hop latency (printed, not asserted): a trivial echo through 0, 1, 2 and 3
relays, each hop a process of its own, next to a stock PB echo in another
process, all measured in the same run; and the time for a model change at
the origin to reach a mirror three hops away.

    python benchmarks/hops.py [--calls 2000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from twisted.internet import defer, reactor, task  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint  # noqa: E402
from twisted.spread import pb  # noqa: E402

from aurora import Client, signals  # noqa: E402
from tests.app import IUserManager  # noqa: E402
from tests.helpers import RelayProcess, ServerProcess, SignalLog, forgetSenders  # noqa: E402


class RawPB(ServerProcess):
    @classmethod
    async def start(cls) -> RawPB:
        proc = cls()
        reactor.spawnProcess(proc, sys.executable,
                             [sys.executable, os.path.join(ROOT, "benchmarks", "_rawpb.py")],
                             env=os.environ.copy())
        proc.port = await proc.ready.addTimeout(30, reactor)
        return proc


async def latencies(call, n: int) -> list[float]:
    for _ in range(50):  # warm up
        await call()
    out = []
    for _ in range(n):
        t = reactor.seconds()
        await call()
        out.append(reactor.seconds() - t)
    return out


def line(label: str, times: list[float], base: float | None = None) -> float:
    us = sorted(t * 1e6 for t in times)
    p50 = statistics.median(us)
    p99 = us[int(len(us) * 0.99) - 1]
    extra = f"   +{(p50 - base):6.0f} us over raw PB ({p50 / base:4.2f}x)" if base else ""
    print(f"{label:26s} p50 {p50:7.0f} us   p99 {p99:7.0f} us   "
          f"{1e6 / statistics.mean(us):7.0f} calls/s{extra}")
    return p50


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args(argv)
    procs = []
    clients = []
    try:
        raw = await RawPB.start()
        procs.append(raw)
        factory = pb.PBClientFactory()
        await TCP4ClientEndpoint(reactor, "127.0.0.1", raw.port).connect(factory)
        root = await factory.getRootObject()
        base = line("raw PB echo", await latencies(lambda: root.callRemote("echo", 1),
                                                  args.calls))

        origin = await ServerProcess.start()
        procs.append(origin)
        ports = [origin.port]
        workdir = tempfile.mkdtemp()
        for _ in range(3):
            relay = await RelayProcess.start(ports[-1], 0, workdir=workdir)
            procs.append(relay)
            ports.append(relay.port)
        wrappers = []
        for hops, port in enumerate(ports):
            client = Client(f"tcp:127.0.0.1:{port}")
            clients.append(client)
            users = await (await client.getRegistry()).getManager(IUserManager)
            wrappers.append(users)
        previous = None
        for hops, users in enumerate(wrappers):
            p50 = line(f"aurora echo, {hops} relays",
                       await latencies(lambda: users.echo(1), args.calls), base)
            if previous is not None:
                print(f"{'':26s} this hop adds {p50 - previous:6.0f} us "
                      f"({(p50 - previous) / base:4.2f}x a raw PB round trip)")
            previous = p50

        # A model change at the origin, seen by a mirror three hops away.
        far = await wrappers[3].getModel("alice")
        near = wrappers[0]
        log = SignalLog(signals.changed, far)
        times = []
        try:
            for i in range(200):
                arrived = log.next()
                t = reactor.seconds()
                await near.setOnline("alice", i % 2 == 0)
                await arrived
                times.append(reactor.seconds() - t)
        finally:
            log.close()
        ms = sorted(x * 1000 for x in times)
        print(f"model change -> mirror 3 hops away: p50 {statistics.median(ms):.2f} ms, "
              f"p99 {ms[int(len(ms) * 0.99) - 1]:.2f} ms (n={len(ms)}, measured from "
              "the call that makes the change)")
        factory.disconnect()
    finally:
        for c in clients:
            await c.stop()
        for p in procs:
            await p.kill()


if __name__ == "__main__":
    try:
        task.react(lambda _: defer.ensureDeferred(main(sys.argv[1:])))
    finally:
        forgetSenders()
