"""
The measuring client, a process of its own; the orchestrator (run.py) starts
one per scenario and repetition and reads one line of JSON from it.

    python benchmarks/_measure.py calls   --target NAME=KIND:PORT ... [--seconds S]
    python benchmarks/_measure.py fanout  --target NAME=KIND:PORT ... --observers N
    python benchmarks/_measure.py clients --target aurora:PORT --connections N
    python benchmarks/_measure.py scale   --target aurora:PORT --count N
    python benchmarks/_measure.py reconnect --restarts N --partitions N
    python benchmarks/_measure.py cpu     --target NAME=KIND:PORT --pid PID ... --count N

KIND is rawpb (a stock PB root) or aurora (an aurora server or relay).  Every
loop here is bounded in both time and count.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
import tracemalloc
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pydispatch import dispatcher  # noqa: E402
from twisted.internet import defer, protocol, reactor, task  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint  # noqa: E402
from twisted.spread import pb  # noqa: E402

from aurora import Client, signals  # noqa: E402
from benchmarks._app import IBench, RawCounterMirror  # noqa: E402
from benchmarks._serve import raiseFileLimit  # noqa: E402

now = time.perf_counter
WARMUP = 200
MAX_CALLS = 200_000


def cpuSeconds(pid: int) -> float:
    """The CPU time (user and system) process C{pid} has used, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        # The command name, field 2, may hold spaces: count after its ")".
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def summary(latencies: list[float], elapsed: float) -> dict[str, float]:
    us = sorted(t * 1e6 for t in latencies)
    return {
        "calls": len(us),
        "per_s": len(us) / elapsed,
        "p50_us": us[len(us) // 2],
        "p99_us": us[min(len(us) - 1, int(len(us) * 0.99))],
    }


class Sequential:
    """One call at a time for C{seconds} (at most C{maxCalls}): latencies."""

    def __init__(self, call: Callable[[], defer.Deferred], seconds: float,
                 maxCalls: int = MAX_CALLS) -> None:
        self.call, self.seconds, self.maxCalls = call, seconds, maxCalls
        self.latencies: list[float] = []
        self.done: defer.Deferred = defer.Deferred()

    def run(self) -> defer.Deferred:
        self.start = now()
        self.deadline = self.start + self.seconds
        self._next()
        return self.done

    def _next(self) -> None:
        self.sent = now()
        self.call().addCallbacks(self._got, self.done.errback)

    def _got(self, _: Any) -> None:
        t = now()
        self.latencies.append(t - self.sent)
        if t >= self.deadline or len(self.latencies) >= self.maxCalls:
            self.done.callback(summary(self.latencies, t - self.start))
        else:
            self._next()


class Pipelined:
    """C{depth} calls in flight for C{seconds}: completed calls per second."""

    def __init__(self, call: Callable[[], defer.Deferred], seconds: float,
                 depth: int = 100, maxCalls: int = MAX_CALLS) -> None:
        self.call, self.seconds, self.depth, self.maxCalls = call, seconds, depth, maxCalls
        self.completed = self.issued = 0
        self.done: defer.Deferred = defer.Deferred()

    def run(self) -> defer.Deferred:
        self.start = now()
        self.deadline = self.start + self.seconds
        for _ in range(self.depth):
            self._issue()
        return self.done

    def _issue(self) -> None:
        self.issued += 1
        self.call().addCallbacks(self._got, self._failed)

    def _failed(self, f: Any) -> None:
        if not self.done.called:
            self.done.errback(f)

    def _got(self, _: Any) -> None:
        self.completed += 1
        t = now()
        if t < self.deadline and self.issued < self.maxCalls:
            self._issue()
        elif self.completed == self.issued and not self.done.called:
            self.done.callback({"calls": self.completed,
                                "per_s": self.completed / (t - self.start)})


async def warm(call: Callable[[], defer.Deferred], n: int = WARMUP) -> None:
    for _ in range(n):
        await call()


# -- connecting

async def rawRoot(port: int) -> tuple[Any, Callable[[], None]]:
    factory = pb.PBClientFactory()
    await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
    return await factory.getRootObject(), factory.disconnect


class Target:
    """One server to measure: stock PB or aurora, with the same call names."""

    def __init__(self, spec: str) -> None:
        self.name, rest = spec.split("=", 1) if "=" in spec else (spec.split(":")[0], spec)
        self.kind, port = rest.split(":")
        self.port = int(port)
        self.closers: list[Callable[[], Any]] = []

    async def connect(self, **clientOptions: Any) -> Callable[..., defer.Deferred]:
        """A new connection; returns C{call(name, *args)}."""
        if self.kind == "rawpb":
            root, close = await rawRoot(self.port)
            self.closers.append(close)
            return root.callRemote
        client = Client(f"tcp:127.0.0.1:{self.port}", **clientOptions)
        self.closers.append(client.stop)
        bench = await (await client.getRegistry()).getManager(IBench)
        return bench.callRemote

    async def close(self) -> None:
        closers, self.closers = self.closers, []
        await defer.gatherResults([defer.maybeDeferred(c) for c in closers])


# -- scenarios

async def calls(args: argparse.Namespace) -> dict[str, Any]:
    """Sequential echo, pipelined echo and copies for every target, in order."""
    out: dict[str, Any] = {"seq": {}, "pipelined": {}, "copies": {}}
    for target in map(Target, args.target):
        call = await target.connect()
        echo = lambda: call("echo", 1)  # noqa: E731
        await warm(echo)
        out["seq"][target.name] = await Sequential(echo, args.seconds).run()
        if target.name in args.pipelined:
            out["pipelined"][target.name] = await Pipelined(echo, args.seconds).run()
        if target.name in args.copies:
            for size in args.sizes:
                blob = lambda: call("getBlob", size)  # noqa: E731
                await warm(blob, 50)
                result = await Sequential(blob, args.seconds / 2).run()
                result["MB_s"] = result["per_s"] * size / 1e6
                out["copies"][f"{target.name} {size // 1024} KB"] = result
        await target.close()
    return out


async def connectMany(target: Target, n: int, batch: int = 100,
                      **clientOptions: Any) -> list[Callable[..., defer.Deferred]]:
    """C{n} connections to C{target}, at most C{batch} being set up at once."""
    out: list[Callable[..., defer.Deferred]] = []
    for start in range(0, n, batch):
        out += await defer.gatherResults(
            [defer.ensureDeferred(target.connect(**clientOptions))
             for _ in range(min(batch, n - start))])
    return out


class Arrivals:
    """Counts model updates arriving at mirrors; fires when all have C{final}."""

    def __init__(self) -> None:
        self.applied = 0
        self.final: int | None = None
        self.reached: set[int] = set()
        self.mirrors: set[int] = set()
        self.done: defer.Deferred | None = None

    def expect(self, final: int, mirrors: list[Any]) -> defer.Deferred:
        # Only these mirrors count: another target may follow the same model
        # (a relay's mirrors of the origin's).  Keyed by __dict__: a PB
        # RemoteCache hands out "borg" copies sharing the one it updates.
        self.final, self.applied = final, 0
        self.mirrors = {id(m.__dict__) for m in mirrors}
        self.reached = set()
        self.done = defer.Deferred()
        return self.done

    def arrived(self, mirror: Any, value: int) -> None:
        key = id(mirror.__dict__)
        if key not in self.mirrors:
            return
        self.applied += 1
        if value == self.final:
            self.reached.add(key)
            if len(self.reached) == len(self.mirrors) and self.done is not None:
                done, self.done = self.done, None
                done.callback(None)


async def fanout(args: argparse.Namespace) -> dict[str, Any]:
    """
    One model changing as fast as the server can change it, observed over
    C{observers} connections per target: updates per second until every
    mirror has the last change, and the time for one change to reach all.
    """
    arrivals = Arrivals()
    RawCounterMirror.onSet = arrivals.arrived

    def auroraChanged(sender: Any, name: str, value: Any, **kw: Any) -> None:
        arrivals.arrived(sender, value)

    dispatcher.connect(auroraChanged, signal=signals.changed, weak=False)
    targets = list(map(Target, args.target))
    state = {}
    for target in targets:
        callers = await connectMany(target, args.observers)
        mirrors = await defer.gatherResults([c("getCounter") for c in callers])
        state[target.name] = (callers[0], mirrors)
    out: dict[str, Any] = {t.name: {"burst": [], "one": []} for t in targets}
    for _ in range(args.reps):
        for target in targets:
            call, mirrors = state[target.name]
            value = await call("churn", 0)
            done = arrivals.expect(value + args.changes, mirrors)
            start = now()
            await call("churn", args.changes)
            await done.addTimeout(120, reactor)
            elapsed = now() - start
            out[target.name]["burst"].append({
                "updates_s": args.changes / elapsed,
                "deliveries_s": args.changes * len(mirrors) / elapsed,
                "applied": arrivals.applied,
                "seconds": elapsed,
            })
            one = []
            for _ in range(5):
                done = arrivals.expect(value + args.changes + len(one) + 1, mirrors)
                start = now()
                await call("churn", 1)
                await done.addTimeout(60, reactor)
                one.append(now() - start)
            out[target.name]["one"].append(statistics.median(one) * 1000)
    for target in targets:
        await target.close()
    return out


async def clients(args: argparse.Namespace) -> dict[str, Any]:
    """One client calling alone, then C{connections} clients calling at once."""
    target = Target(args.target[0])
    out: dict[str, Any] = {"single": [], "many": [], "connections": args.connections}
    single = await target.connect()
    memory = lambda: single("memory")  # noqa: E731
    before = await memory()
    many = await connectMany(target, args.connections)
    after = await memory()
    out["rss_per_connection"] = (after["rss"] - before["rss"]) / args.connections
    for _ in range(args.reps):
        echo = lambda: single("echo", 1)  # noqa: E731
        await warm(echo)
        out["single"].append((await Sequential(echo, args.seconds).run())["per_s"])
        loops = [Sequential(lambda c=c: c("echo", 1), args.seconds).run() for c in many]
        start = now()
        results = await defer.gatherResults(loops)
        out["many"].append(sum(r["calls"] for r in results) / (now() - start))
    await target.close()
    return out


async def scale(args: argparse.Namespace) -> dict[str, Any]:
    """Memory per wrapper and per mirror, C{count} of each on one connection."""
    tracemalloc.start()
    target = Target(args.target[0])
    call = await target.connect(referenceLimit=3 * args.count + 100,
                                callTimeout=300)
    await call("prepare", args.count)
    out: dict[str, Any] = {"count": args.count}
    held = []
    for kind, method in (("wrapper", "getItems"), ("mirror", "getCounters")):
        server0 = (await call("memory"))["traced"]
        gc.collect()
        client0 = tracemalloc.get_traced_memory()[0]
        objects = await call(method)
        gc.collect()
        client1 = tracemalloc.get_traced_memory()[0]
        server1 = (await call("memory"))["traced"]
        held.append(objects)
        # They work: the last wrapper answers, the last mirror has its state.
        if kind == "wrapper":
            assert await objects[-1].ping() == "pong"
        else:
            assert objects[-1].value == args.count - 1
        out[kind] = {"client_bytes": (client1 - client0) / args.count,
                     "server_bytes": (server1 - server0) / args.count,
                     "live": len(objects)}
    held.clear()
    await target.close()
    tracemalloc.stop()
    return out


class _ServerProcess(protocol.ProcessProtocol):
    """benchmarks/_serve.py aurora, restartable on its port."""

    def __init__(self) -> None:
        self.ready: defer.Deferred = defer.Deferred()
        self.ended: defer.Deferred = defer.Deferred()
        self.output = b""

    @classmethod
    async def start(cls, port: int = 0) -> tuple[_ServerProcess, int, float]:
        proc = cls()
        reactor.spawnProcess(proc, sys.executable, [
            sys.executable, os.path.join(ROOT, "benchmarks", "_serve.py"), "aurora",
            "--port", str(port)], env=os.environ.copy())
        port = await proc.ready.addTimeout(30, reactor)
        return proc, port, now()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if not self.ready.called and b"listening on " in self.output:
            self.ready.callback(int(self.output.split(b"listening on ")[1].split()[0]))

    def processEnded(self, reason: Any) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError("the server process ended"))
        self.ended.callback(None)

    async def kill(self) -> None:
        if not self.ended.called:
            self.transport.signalProcess("KILL")
        await self.ended


async def reconnect(args: argparse.Namespace) -> dict[str, Any]:
    """
    Server restarts (SIGKILL, a new process on the same port): the backoff
    wait (the server listens .. the new connection is made) and the resync
    (connection made .. the first call through a wrapper held from before
    succeeds); and silent partitions until C{disconnected}.
    """
    from tests.helpers import PartitionProxy, SignalLog

    server, port, _ = await _ServerProcess.start()
    client = Client(f"tcp:127.0.0.1:{port}", heartbeat=args.heartbeat)
    made: list[float] = []
    build = client.factory.buildProtocol
    client.factory.buildProtocol = lambda addr: (made.append(now()), build(addr))[1]
    lost = SignalLog(signals.disconnected, client)
    out: dict[str, Any] = {"backoff_ms": [], "resync_ms": [], "partition_ms": []}
    try:
        bench = await (await client.getRegistry()).getManager(IBench)
        counter = await bench.getCounter()
        await bench.echo(0)
        for _ in range(args.restarts):
            gone = lost.next()
            await server.kill()
            await gone
            server, _, listening = await _ServerProcess.start(port)
            await client.whenConnected()
            await bench.echo(1)
            done = now()
            out["backoff_ms"].append((made[-1] - listening) * 1000)
            out["resync_ms"].append((done - made[-1]) * 1000)
        assert counter.value == 0  # the mirror followed the new server
    finally:
        lost.close()
        await client.stop()

    proxy = PartitionProxy(port)
    client = Client(f"tcp:127.0.0.1:{await proxy.start()}", heartbeat=args.heartbeat,
                    reconnectDelay=0.05, maxReconnectDelay=0.2)
    lost = SignalLog(signals.disconnected, client)
    try:
        await client.getRegistry()
        for _ in range(args.partitions):
            gone = lost.next()
            proxy.partitioned = True
            start = now()
            await gone
            out["partition_ms"].append((now() - start) * 1000)
            proxy.partitioned = False
            await client.whenConnected()
    finally:
        lost.close()
        await client.stop()
        await proxy.stop()
        await server.kill()
    return out


async def cpu(args: argparse.Namespace) -> dict[str, Any]:
    """
    The CPU time the server processes (C{--pid}) spend per sequential echo
    call of one target: steadier than calls/s on a busy machine, since
    waiting for a CPU costs none.  The clock ticks in 10 ms, so C{--count}
    calls must take well over that.
    """
    target = Target(args.target[0])
    call = await target.connect()
    echo = lambda: call("echo", 1)  # noqa: E731
    await warm(echo)
    before = {pid: cpuSeconds(pid) for pid in args.pid}
    result = await Sequential(echo, 600.0, maxCalls=args.count).run()
    result["cpu_us"] = {str(pid): (cpuSeconds(pid) - t) / result["calls"] * 1e6
                        for pid, t in before.items()}
    await target.close()
    return result


SCENARIOS = {"calls": calls, "fanout": fanout, "clients": clients, "scale": scale,
             "reconnect": reconnect, "cpu": cpu}


def options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--target", action="append", default=[])
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--pipelined", action="append", default=[])
    parser.add_argument("--copies", action="append", default=[])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1024, 65536])
    parser.add_argument("--observers", type=int, default=100)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--restarts", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=5)
    parser.add_argument("--heartbeat", type=float, default=0.5)
    parser.add_argument("--pid", type=int, action="append", default=[])
    return parser.parse_args(argv)


async def main(reactor: Any, argv: list[str]) -> None:
    args = options(argv)
    raiseFileLimit()
    result = await SCENARIOS[args.scenario](args)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    try:
        task.react(lambda r: defer.ensureDeferred(main(r, sys.argv[1:])))
    finally:
        # pydispatcher's weak sender references otherwise run into a
        # half-torn-down module at interpreter exit.
        dispatcher.connections.clear()
        dispatcher.senders.clear()
        dispatcher.sendersBack.clear()
