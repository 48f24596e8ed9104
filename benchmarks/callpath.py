"""
The call path of one sequential echo, counted with cProfile: the distinct
functions it passes through (client and server together, in one process over
127.0.0.1), by package, and the function calls per echo.  Deterministic,
unlike timings, so two commits can be compared on a busy machine.

    python benchmarks/callpath.py [--calls N] [--relay] [--json FILE]

With C{--relay} the client calls through a relay (a L{Relay} in the same
process): the difference is what one hop costs in functions and calls.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
from collections import Counter
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from twisted.internet import defer, task  # noqa: E402

from aurora import Client, Registry, Relay, Server  # noqa: E402
from benchmarks._app import Bench, IBench  # noqa: E402


def _group(filename: str) -> str:
    path = filename.replace(os.sep, "/")
    for marker, name in (("/aurora/", "aurora"), ("/twisted/spread/", "twisted.spread"),
                         ("/twisted/", "twisted (other)"), ("/zope/", "zope"),
                         ("/pydispatch/", "pydispatch")):
        if marker in path:
            module = path.rsplit("/", 1)[-1]
            return f"{name}:{module}" if name == "aurora" else name
    return "python" if filename.startswith("~") or "python3" in path else "other"


def profile(stats: pstats.Stats, calls: int) -> dict[str, Any]:
    """Distinct functions, by package, and function calls per echo."""
    functions: Counter[str] = Counter()
    auroraModules: set[str] = set()
    total = 0
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, _line, _name), (primitive, _n, _tt, _ct, _callers) in raw.items():
        group = _group(filename)
        if group.startswith("aurora:"):
            auroraModules.add(group.split(":", 1)[1])
            group = "aurora"
        functions[group] += 1
        total += primitive
    return {"functions": dict(functions), "aurora_modules": sorted(auroraModules),
            "calls_per_echo": total / calls}


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--relay", action="store_true")
    parser.add_argument("--json")
    o = parser.parse_args(argv)
    registry = Registry()
    registry.register(IBench, Bench())
    server = Server(registry)
    port = (await server.listen("tcp:0:interface=127.0.0.1")).getHost().port
    relay = None
    if o.relay:
        relay = Relay(f"tcp:127.0.0.1:{port}", clientOptions={"heartbeat": None})
        port = (await relay.start("tcp:0:interface=127.0.0.1"))[0].getHost().port
    client = Client(f"tcp:127.0.0.1:{port}", heartbeat=None)
    bench = await (await client.getRegistry()).getManager(IBench)
    for _ in range(200):  # warm: caches filled, first-call paths behind us
        await bench.echo(1)
    results = {}
    for calls in (1, o.calls):
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(calls):
            await bench.echo(1)
        profiler.disable()
        results[calls] = profile(pstats.Stats(profiler), calls)
    await client.stop()
    if relay is not None:
        await relay.stop()
    await server.stop()
    one = results[1]
    print(f"one sequential echo (client{', relay' if o.relay else ''} and server, one process):")
    for group, n in sorted(one["functions"].items(), key=lambda kv: -kv[1]):
        print(f"  {n:4d} distinct functions in {group}")
    print(f"  aurora modules: {len(one['aurora_modules'])} ({', '.join(one['aurora_modules'])})")
    print(f"  function calls per echo: {one['calls_per_echo']:.0f} "
          f"(over {o.calls} echoes: {results[o.calls]['calls_per_echo']:.0f})")
    if o.json:
        with open(o.json, "w") as f:
            json.dump({"one": one, "many": results[o.calls]}, f, indent=1)


if __name__ == "__main__":
    task.react(lambda r: defer.ensureDeferred(main(r, sys.argv[1:])))
