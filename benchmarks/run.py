"""
aurora's benchmark suite: every figure next to its baseline, measured in the
same run, servers and clients each in a process of their own on 127.0.0.1.

    python benchmarks/run.py [--quick] [--only calls,fanout,...] [--json FILE]

Each scenario runs several times, interleaved with its baseline; the table
shows the median and the min-max spread.  Nothing here passes or fails: the
targets are printed next to what was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
PY = sys.executable
SECTIONS = ("calls", "callpath", "fanout", "clients", "scale", "reconnect")


class Servers:
    """The server processes of a run, killed at the end whatever happens."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.pids: dict[int, int] = {}  # port -> the pid of the process serving it

    def start(self, *argv: str, script: str = "_serve.py") -> int | None:
        # A file, not a pipe, for what servers log: nobody reads it while
        # they run, and a full pipe would stop them.
        errors = tempfile.TemporaryFile("w+")
        proc = subprocess.Popen([PY, os.path.join(HERE, script), *argv],
                                stdout=subprocess.PIPE, stderr=errors, text=True)
        self.procs.append(proc)
        line = proc.stdout.readline()  # the server's first line, or EOF
        if not line.startswith("listening on "):
            proc.wait(10)
            if proc.returncode == 3:
                return None  # an optional peer that is not installed
            errors.seek(0)
            raise RuntimeError(f"{argv} did not start: {errors.read()[-2000:]}")
        port = int(line.split()[2])
        self.pids[port] = proc.pid
        return port

    def stopAll(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(10)
        self.procs.clear()


def measure(*argv: str, script: str = "_measure.py", timeout: float = 300) -> Any:
    """Run a measuring process; its last line of output is JSON."""
    done = subprocess.run([PY, os.path.join(HERE, script), *argv], capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[:2]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def fmt(s: dict[str, float], digits: int = 0) -> str:
    f = f"{{:,.{digits}f}}"
    return f"{f.format(s['median'])} [{f.format(s['min'])}-{f.format(s['max'])}]"


# -- the scenarios

def calls(servers: Servers, o: argparse.Namespace, out: dict[str, Any]) -> None:
    """1-4: sequential and pipelined echo, peers, hops, copies."""
    raw = servers.start("rawpb")
    origin = servers.start("aurora")
    # One relay: three processes.  On 2 cores a longer chain measures how
    # fast the scheduler wakes each process, not what a hop costs.
    ports = [origin, servers.start("relay", "--upstream", str(origin))]
    peers = {}
    for name, argv in (("Pyro5 (serpent)", ["pyro5", "--serializer", "serpent"]),
                       ("Pyro5 (marshal)", ["pyro5", "--serializer", "marshal"]),
                       ("RPyC", ["rpyc"])):
        port = servers.start("serve", *argv, script="_peers.py")
        if port is not None:
            peers[name] = (argv, port)
    targets = [f"raw PB=rawpb:{raw}", f"aurora=aurora:{origin}"] + [
        f"aurora, {n} relay{'s' if n > 1 else ''}=aurora:{p}"
        for n, p in enumerate(ports[1:], 1)]
    rounds: list[dict[str, Any]] = []
    for r in range(o.reps):
        # Rotate the order: a drift in the machine's speed spreads evenly.
        order = targets[r % len(targets):] + targets[:r % len(targets)]
        argv = ["calls", "--seconds", str(o.seconds), "--pipelined", "raw PB",
                "--pipelined", "aurora", "--copies", "raw PB", "--copies", "aurora"]
        for t in order:
            argv += ["--target", t]
        result = measure(*argv)
        for name, (peerArgv, port) in peers.items():
            result["seq"][name] = measure(
                "seq", *peerArgv, "--port", str(port), "--seconds", str(o.seconds),
                "--max-calls", "200000", script="_peers.py")
        result["cpu"] = serverCPU(servers, o, raw, origin, ports[1])
        rounds.append(result)
    out["calls"] = rounds


def serverCPU(servers: Servers, o: argparse.Namespace, raw: int, origin: int,
              relay: int) -> dict[str, Any]:
    """
    3b: CPU microseconds per sequential echo call in each server process:
    stock PB's, aurora's, and a relay's own (the origin behind it apart).
    """
    count = str(500 if o.quick else 5000)
    out: dict[str, Any] = {}
    for name, kind, port, pids in (
            ("raw PB", "rawpb", raw, [raw]), ("aurora", "aurora", origin, [origin]),
            ("aurora, 1 relay", "aurora", relay, [relay, origin])):
        argv = ["cpu", "--target", f"{name}={kind}:{port}", "--count", count]
        for p in pids:
            argv += ["--pid", str(servers.pids[p])]
        result = measure(*argv)
        us = [result["cpu_us"][str(servers.pids[p])] for p in pids]
        out[name] = {"server_us": us[0], "origin_us": us[1] if len(us) > 1 else None,
                     "per_s": result["per_s"]}
    return out


def callpath(servers: Servers, o: argparse.Namespace, out: dict[str, Any]) -> None:
    """3c: the functions one sequential echo passes through (cProfile)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([PY, os.path.join(HERE, "callpath.py"), "--calls",
                        "100" if o.quick else "1000", "--json", f.name],
                       check=True, capture_output=True, timeout=300)
        out["callpath"] = json.load(f)


def reportCallpath(r: dict, rep: Report) -> None:
    one = r["one"]
    rep.line("3c. The call path of one sequential echo (cProfile; client and server in one process)")
    for group, n in sorted(one["functions"].items(), key=lambda kv: -kv[1]):
        rep.line(f"  {n:4d} distinct functions in {group}")
    rep.line(f"  aurora modules passed through: {len(one['aurora_modules'])}")
    rep.line(f"  function calls per echo: {r['many']['calls_per_echo']:.0f}")


def fanout(servers: Servers, o: argparse.Namespace, out: dict[str, Any]) -> None:
    """5: one model changing fast, observed from 1, 100, 1,000 connections."""
    raw = servers.start("rawpb")
    origin = servers.start("aurora")
    # The relay's own origin: the mirrors of one target must not be busy
    # following another target's changes.
    relay = servers.start("relay", "--upstream", str(servers.start("aurora")))
    out["fanout"] = {}
    for n in o.observers:
        changes = max(20, min(2000, 40_000 // n))
        out["fanout"][n] = measure(
            "fanout", "--observers", str(n), "--changes", str(changes),
            "--reps", str(o.heavyReps), "--target", f"raw PB=rawpb:{raw}",
            "--target", f"aurora=aurora:{origin}",
            "--target", f"aurora, 1 relay=aurora:{relay}")


def clients(servers: Servers, o: argparse.Namespace, out: dict[str, Any]) -> None:
    """6: many client connections calling at once, against one."""
    port = servers.start("aurora")
    out["clients"] = measure("clients", "--target", f"aurora:{port}",
                             "--connections", str(o.connections),
                             "--reps", str(o.heavyReps), "--seconds", str(o.seconds))


def scale(servers: Servers, o: argparse.Namespace, out: dict[str, Any]) -> None:
    """7: 10,000 wrappers and 10,000 mirrors on one connection."""
    port = servers.start("aurora", "--tracemalloc")
    out["scale"] = measure("scale", "--target", f"aurora:{port}", "--count", str(o.count))


def reconnect(servers: Servers, o: argparse.Namespace, out: dict[str, Any]) -> None:
    """8: server restarts and silent partitions, heartbeat 0.5 s."""
    out["reconnect"] = measure("reconnect", "--restarts", str(o.restarts),
                               "--partitions", str(o.partitions), "--heartbeat", "0.5")


# -- the report

class Report:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.targets: list[tuple[str, str, bool | None]] = []

    def line(self, text: str = "") -> None:
        self.lines.append(text)

    def target(self, what: str, measured: str, met: bool | None) -> None:
        self.targets.append((what, measured, met))

    def text(self) -> str:
        out = list(self.lines)
        if self.targets:
            out += ["", "Targets"]
            for what, measured, met in self.targets:
                mark = {True: "met", False: "MISSED", None: "n/a"}[met]
                out.append(f"  {mark:7s} {what}: {measured}")
        return "\n".join(out)


def ratios(rounds: list[dict], section: str, name: str, base: str, key: str) -> dict:
    return spread([r[section][name][key] / r[section][base][key] for r in rounds
                   if name in r[section] and base in r[section]])


def reportCalls(rounds: list[dict], rep: Report) -> None:
    seq = rounds[0]["seq"]
    rep.line("1, 3. Sequential echo: one call at a time")
    rep.line(f"  {'':22s} {'calls/s':>22s} {'p50 us':>18s} {'p99 us':>20s} "
             f"{'calls/s vs raw PB':>20s}")
    for name in seq:
        per = spread([r["seq"][name]["per_s"] for r in rounds])
        p50 = spread([r["seq"][name]["p50_us"] for r in rounds])
        p99 = spread([r["seq"][name]["p99_us"] for r in rounds])
        ratio = ratios(rounds, "seq", name, "raw PB", "per_s")
        rep.line(f"  {name:22s} {fmt(per):>22s} {fmt(p50):>18s} {fmt(p99):>20s} "
                 f"{fmt(ratio, 2):>20s}")
    ratio = ratios(rounds, "seq", "aurora", "raw PB", "per_s")
    rep.target("aurora sequential calls/s >= 0.85x raw PB", f"{fmt(ratio, 2)}x",
               ratio["median"] >= 0.85)
    if "RPyC" in seq:
        r = ratios(rounds, "seq", "aurora", "RPyC", "per_s")
        rep.target("stretch: aurora sequential calls/s >= RPyC", f"{fmt(r, 2)}x",
                   r["median"] >= 1.0)
    hop = spread([(r["seq"]["aurora, 1 relay"]["p50_us"] - r["seq"]["aurora"]["p50_us"])
                  / r["seq"]["raw PB"]["p50_us"] for r in rounds])
    rep.line(f"  a relay hop adds, per call (p50), in raw PB round trips: {fmt(hop, 2)}x")
    rep.target("a relay hop adds <= 1.2x a raw PB round trip (one relay, three processes)",
               f"{fmt(hop, 2)}x", hop["median"] <= 1.2)

    if "cpu" in rounds[0]:
        rep.line("  server CPU per call (us, user+system from /proc; waiting for a CPU costs none):")
        for name in rounds[0]["cpu"]:
            us = spread([r["cpu"][name]["server_us"] for r in rounds])
            ratio = spread([r["cpu"][name]["server_us"] / r["cpu"]["raw PB"]["server_us"]
                            for r in rounds])
            what = "the relay itself" if "relay" in name else "the server"
            rep.line(f"    {name:20s} {what:18s} {fmt(us):>18s} us   "
                     f"{fmt(ratio, 2)}x raw PB")

    rep.line()
    rep.line("2. Pipelined echo: 100 calls in flight")
    for name in rounds[0]["pipelined"]:
        per = spread([r["pipelined"][name]["per_s"] for r in rounds])
        ratio = ratios(rounds, "pipelined", name, "raw PB", "per_s")
        rep.line(f"  {name:22s} {fmt(per):>22s} calls/s   {fmt(ratio, 2)}x raw PB")
    ratio = ratios(rounds, "pipelined", "aurora", "raw PB", "per_s")
    rep.target("aurora pipelined calls/s >= 0.85x raw PB", f"{fmt(ratio, 2)}x",
               ratio["median"] >= 0.85)

    rep.line()
    rep.line("4. Copies: a Copyable of 1 KB and 64 KB fetched one at a time")
    for name in rounds[0]["copies"]:
        per = spread([r["copies"][name]["per_s"] for r in rounds])
        mb = spread([r["copies"][name]["MB_s"] for r in rounds])
        base = "raw PB " + " ".join(name.split()[-2:])  # "raw PB 64 KB"
        ratio = ratios(rounds, "copies", name, base, "per_s")
        rep.line(f"  {name:22s} {fmt(per):>22s} calls/s {fmt(mb, 1):>20s} MB/s   "
                 f"{fmt(ratio, 2)}x raw PB")


def reportFanout(results: dict, rep: Report) -> None:
    rep.line("5. Model fan-out: one model changing as fast as the server can change "
             "it")
    rep.line(f"  {'observers':>9s} {'':16s} {'deliveries/s':>26s} {'one change, ms to last':>26s}"
             f"  updates applied")
    at100 = None
    for n, byTarget in results.items():
        for name, runs in byTarget.items():
            deliveries = spread([b["deliveries_s"] for b in runs["burst"]])
            one = spread(runs["one"])
            applied = runs["burst"][-1]["applied"]
            sent = round(runs["burst"][-1]["deliveries_s"] * runs["burst"][-1]["seconds"])
            rep.line(f"  {n:>9} {name:16s} {fmt(deliveries):>26s} {fmt(one, 1):>26s}"
                     f"  {applied:,} of {sent:,}")
            if str(n) == "100" and name == "aurora":
                at100 = deliveries["median"] / statistics.median(
                    [b["deliveries_s"] for b in byTarget["raw PB"]["burst"]])
    if at100 is not None:
        rep.target("fan-out deliveries/s at 100 observers >= 2x raw PB",
                   f"{at100:.2f}x", at100 >= 2)


def reportClients(r: dict, rep: Report) -> None:
    single, many = spread(r["single"]), spread(r["many"])
    rep.line(f"6. Many clients: {r['connections']:,} connections calling at once")
    rep.line(f"  one client                {fmt(single):>22s} calls/s")
    rep.line(f"  {r['connections']:,} clients, aggregate  {fmt(many):>22s} calls/s")
    rep.line(f"  server memory per connection: {r['rss_per_connection'] / 1024:.1f} KiB "
             "(resident, measured after each connection got a manager)")
    ratio = many["median"] / single["median"]
    rep.target(f"{r['connections']:,} connections: aggregate >= 0.8x one client",
               f"{ratio:.2f}x", ratio >= 0.8)


def reportScale(r: dict, rep: Report) -> None:
    rep.line(f"7. Scale: {r['count']:,} wrappers and {r['count']:,} mirrors on one "
             "connection (tracemalloc)")
    worst = 0.0
    for kind in ("wrapper", "mirror"):
        k = r[kind]
        worst = max(worst, k["client_bytes"], k["server_bytes"])
        rep.line(f"  per {kind:8s}: client {k['client_bytes']:,.0f} B, "
                 f"server {k['server_bytes']:,.0f} B ({k['live']:,} live)")
    rep.target("10,000 wrappers and mirrors, each < 2 KB on each side",
               f"worst {worst:,.0f} B", worst < 2048)


def reportReconnect(r: dict, rep: Report) -> None:
    rep.line("8. Reconnect, heartbeat 0.5 s")
    backoff, resync = spread(r["backoff_ms"]), spread(r["resync_ms"])
    part = spread(r["partition_ms"])
    rep.line(f"  server restarts: {backoff['n']}; backoff wait (listening -> connected) "
             f"{fmt(backoff)} ms")
    rep.line(f"  resync (connected -> first call through an old wrapper) {fmt(resync)} ms")
    rep.line(f"  silent partition -> disconnected {fmt(part)} ms ({part['n']} partitions)")
    rep.target("resync within 250 ms of the new connection", f"{resync['median']:.0f} ms",
               resync["median"] <= 250)
    rep.target("partition detected within 2x heartbeat (1000 ms)",
               f"{part['max']:.0f} ms (worst)", part["max"] <= 1000)


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f
                        if ln.startswith("model name")), cpu)
    except OSError:
        pass
    import twisted
    return {"cpu": cpu, "cpus": os.cpu_count(), "system": platform.platform(),
            "python": platform.python_version(), "twisted": twisted.__version__}


def options(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections of {', '.join(SECTIONS)}")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: short, small, one repetition")
    parser.add_argument("--json", default="bench-results.json",
                        help="where to write the figures (default: %(default)s)")
    parser.add_argument("--report", metavar="JSON",
                        help="print the table of an earlier run's figures, measure nothing")
    o = parser.parse_args(argv)
    o.only = [s for s in o.only.split(",") if s]
    unknown = set(o.only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}")
    quick = o.quick
    o.reps = 1 if quick else 5
    o.heavyReps = 1 if quick else 3
    o.seconds = 0.2 if quick else 1.0
    o.observers = [1, 10] if quick else [1, 100, 1000]
    o.connections = 20 if quick else 1000
    o.count = 200 if quick else 10_000
    o.restarts = 2 if quick else 10
    o.partitions = 1 if quick else 5
    return o


RUNNERS = {"calls": calls, "callpath": callpath, "fanout": fanout, "clients": clients,
           "scale": scale, "reconnect": reconnect}
REPORTERS = {"calls": reportCalls, "callpath": reportCallpath, "fanout": reportFanout,
             "clients": reportClients, "scale": reportScale, "reconnect": reportReconnect}


def report(out: dict[str, Any]) -> Report:
    rep = Report()
    m = out["machine"]
    rep.line(f"aurora benchmarks, {out['when']}: {m['cpus']} CPUs ({m['cpu']}), "
             f"{m['system']}, Python {m['python']}, Twisted {m['twisted']}")
    rep.line("median [min-max] over repetitions; every process on 127.0.0.1")
    for section in SECTIONS:
        if section in out:
            rep.line()
            REPORTERS[section](out[section], rep)
    return rep


def main(argv: list[str]) -> int:
    o = options(argv)
    if o.report:
        with open(o.report) as f:
            out = json.load(f)
        print(report(out).text() + f"\n\n({out['seconds']:.0f} s)")
        return 0
    started = time.monotonic()
    out: dict[str, Any] = {"machine": machine(), "when": time.strftime("%Y-%m-%d %H:%M"),
                           "quick": o.quick}
    for section in o.only:
        servers = Servers()
        print(f"... {section}", file=sys.stderr, flush=True)
        try:
            RUNNERS[section](servers, o, out)
        finally:
            servers.stopAll()
    out["seconds"] = time.monotonic() - started
    rep = report(out)
    out["targets"] = [{"target": w, "measured": m, "met": ok} for w, m, ok in rep.targets]
    with open(o.json, "w") as f:
        json.dump(out, f, indent=1)
    print(rep.text() + f"\n\n({out['seconds']:.0f} s)")
    print(f"figures written to {o.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
