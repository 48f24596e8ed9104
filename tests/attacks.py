"""
Hostile peers against a server process, measured from outside (issue #11).

Every attack starts its own server process (tests/attackserve.py), a
bystander process (a well-behaved aurora Client calling
C{IUserManager.getUser} every 50 ms) and watches the server process through
/proc: peak RSS growth (VmHWM after the attack, reset with clear_refs before
it, minus VmRSS before; or the largest VmRSS sampled every 20 ms when
clear_refs does not work), and CPU seconds (utime + stime).  A server whose
RSS passes 3 GiB is killed, so that no attack can exhaust the machine.

Each attack is an C{async} function returning a L{Result}: the measurements,
notes for the table, and C{details} that tests/test_attacks.py asserts on.
They run on the global reactor, from pytest (pytest-twisted) or from

    PYTHONPATH=. .venv/bin/python -m tests.attacks [--only 1a,3,...]

which runs every attack once and prints a table.  C{python -m tests.attacks
bystander ENDPOINT [--user U --password P]} is the bystander process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import statistics
import struct
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from twisted.internet import defer, error as netError, protocol, reactor, task
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    clientFromString,
)

from aurora import _banana
from aurora._plain import NotPlain, jellyPlain, unjellyPlain
from tests.helpers import RecordingProxy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1024 * 1024
RSS_CAP = 3 * 1024 * MiB
"""A server process whose RSS passes this is killed (the machine has 24 GiB)."""
SAMPLE_INTERVAL = 0.02
USERS = "tests.app.IUserManager"
PASSWORD = "secret-Pa55-alice"
SECRET = "connect to postgres://app:hunter2@db.internal/prod failed"


# -- the server process, seen through /proc ---------------------------------

def _status(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0]) * 1024
    return out


def rss(pid: int) -> int:
    return _status(pid)["VmRSS"]


def hwm(pid: int) -> int:
    return _status(pid)["VmHWM"]


_TICK = os.sysconf("SC_CLK_TCK")


def cpuSeconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def clearRefs(pid: int) -> bool:
    """Reset the process's VmHWM to its VmRSS; whether that worked."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        status = _status(pid)
    except OSError:
        return False
    return status["VmHWM"] <= status["VmRSS"] + 4 * MiB


class AttackServer(protocol.ProcessProtocol):
    """
    C{python -m tests.attackserve ARGS} in a process of its own.  Its stderr
    is the JSON log: C{lines} keeps each line (cut to C{LINE_CHARS}),
    C{logLines} and C{logBytes} count all of it.
    """

    # Lines are kept whole until this many characters are kept, then cut to
    # SHORT_LINE (a flood of tracebacks must not exhaust the test runner).
    KEEP_CHARS = 64 * MiB
    SHORT_LINE = 400
    MAX_LINES = 400_000

    def __init__(self, args: tuple[str, ...]) -> None:
        self.args = args
        self.ready: defer.Deferred = defer.Deferred()
        self.ended: defer.Deferred = defer.Deferred()
        self.out = b""
        self.partial = b""
        self.lines: list[str] = []
        self.logLines = 0
        self.logBytes = 0
        self.keptChars = 0
        self.stderrHead = b""
        self.port: int | None = None
        self.pid: int | None = None
        self.trust: str | None = None
        self._waiters: list[tuple[Callable[[str], bool], defer.Deferred]] = []

    @classmethod
    async def start(cls, *args: str) -> AttackServer:
        proc = cls(args)
        env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
        reactor.spawnProcess(proc, sys.executable,
                             [sys.executable, "-m", "tests.attackserve", *args],
                             env=env, path=ROOT)
        try:
            await proc.ready.addTimeout(30, reactor)
        except BaseException:
            await proc.kill()
            raise
        return proc

    def outReceived(self, data: bytes) -> None:
        self.out += data
        for line in self.out.decode("utf-8", "replace").splitlines():
            if line.startswith("pid "):
                self.pid = int(line.split()[1])
            elif line.startswith("trust "):
                self.trust = line.split(" ", 1)[1]
            elif line.startswith("listening on ") and not self.ready.called:
                self.port = int(line.split()[2])
                self.ready.callback(self.port)

    def errReceived(self, data: bytes) -> None:
        self.logBytes += len(data)
        if len(self.stderrHead) < 4000:
            self.stderrHead += data[:4000]
        *complete, self.partial = (self.partial + data).split(b"\n")
        for raw in complete:
            self._line(raw)

    def _line(self, raw: bytes) -> None:
        self.logLines += 1
        if len(self.lines) >= self.MAX_LINES:
            return
        if self.keptChars >= self.KEEP_CHARS:
            raw = raw[:self.SHORT_LINE]
        line = raw.decode("utf-8", "replace")
        self.keptChars += len(line)
        self.lines.append(line)
        for match, d in list(self._waiters):
            if match(line):
                self._waiters.remove((match, d))
                d.callback(len(self.lines) - 1)

    def processEnded(self, reason: Any) -> None:
        if self.partial:
            self._line(self.partial)
            self.partial = b""
        if not self.ready.called:
            self.ready.errback(RuntimeError(
                "attackserve ended before serving:\n"
                + self.stderrHead.decode("utf-8", "replace")))
        waiting, self._waiters = self._waiters, []
        for _, d in waiting:
            d.errback(RuntimeError("the server process ended"))
        self.ended.callback(None)

    @property
    def running(self) -> bool:
        return not self.ended.called

    def waitFor(self, match: Callable[[str], bool], start: int = 0,
                timeout: float = 10) -> defer.Deferred:
        """The index of the first log line from C{start} on that C{match}es."""
        for i in range(start, len(self.lines)):
            if match(self.lines[i]):
                return defer.succeed(i)
        inner: defer.Deferred = defer.Deferred()
        self._waiters.append((match, inner))

        def cancel(outer: defer.Deferred) -> None:
            if (match, inner) in self._waiters:
                self._waiters.remove((match, inner))

        outer: defer.Deferred = defer.Deferred(cancel)
        inner.chainDeferred(outer)
        return outer.addTimeout(timeout, reactor)

    def find(self, match: Callable[[str], bool], start: int = 0,
             stop: int | None = None) -> list[int]:
        return [i for i in range(start, len(self.lines) if stop is None else stop)
                if match(self.lines[i])]

    def endpoint(self) -> str:
        if self.trust is not None:
            return f"tls:localhost:{self.port}:trustRoots={self.trust}"
        return f"tcp:127.0.0.1:{self.port}"

    async def kill(self) -> None:
        if not self.ended.called:
            try:
                self.transport.signalProcess("KILL")
            except netError.ProcessExitedAlready:
                pass
        await self.ended


# How a peer's address appears in a log line: IPv4Address(..., port=N) or
# host:N.
_PORT = re.compile(r"(?:port=|127\.0\.0\.1:)(\d+)\b")


def mentions(port: int) -> Callable[[str], bool]:
    """A log line about the peer whose (client-side) port is C{port}."""
    return lambda line: str(port) in line and port in {
        int(p) for p in _PORT.findall(line)}


def isTraceback(line: str) -> bool:
    return '"log_failure"' in line or "Traceback (most recent call last)" in line


def isWarning(line: str) -> bool:
    return '"name": "warn"' in line or '"name": "error"' in line \
        or '"name": "critical"' in line


class Monitor:
    """The server process's memory and CPU during an attack."""

    def __init__(self, proc: AttackServer, cap: int = RSS_CAP) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.cap = cap
        self.loop: task.LoopingCall | None = None
        self.killedAtCap = False

    def begin(self) -> None:
        self.before = rss(self.pid)
        self.cpu0 = cpuSeconds(self.pid)
        self.hwmWorks = clearRefs(self.pid)
        self.peak = self.before
        self.lastRss = self.before
        self.lastCpu = self.cpu0
        self.logMark = (self.proc.logLines, self.proc.logBytes)
        self.loop = task.LoopingCall(self._sample)
        self.loop.start(SAMPLE_INTERVAL)

    def _sample(self) -> None:
        if not self.proc.running:
            self._stopLoop()
            return
        try:
            now = rss(self.pid)
            self.lastCpu = cpuSeconds(self.pid)
        except (OSError, KeyError, IndexError, ValueError):
            self._stopLoop()
            return
        self.lastRss = now
        self.peak = max(self.peak, now)
        if now > self.cap and not self.killedAtCap:
            self.killedAtCap = True
            try:
                self.proc.transport.signalProcess("KILL")
            except netError.ProcessExitedAlready:
                pass

    def _stopLoop(self) -> None:
        if self.loop is not None and self.loop.running:
            self.loop.stop()

    def now(self) -> int | None:
        """VmRSS now (None if the process is gone)."""
        try:
            value = rss(self.pid) if self.proc.running else None
        except OSError:
            value = None
        if value is not None:
            self.lastRss = value
            self.peak = max(self.peak, value)
        return value

    def growth(self) -> float:
        """Peak growth so far, MiB."""
        peak = self.peak
        if self.hwmWorks and self.proc.running:
            try:
                peak = max(peak, hwm(self.pid))
            except OSError:
                pass
        return (peak - self.before) / MiB

    def end(self) -> dict[str, Any]:
        self._sample()
        self._stopLoop()
        cpu = self.lastCpu
        if self.proc.running:
            try:
                cpu = cpuSeconds(self.pid)
            except OSError:
                pass
        return {
            "peakGrowthMiB": self.growth(),
            "cpuSeconds": cpu - self.cpu0,
            "rssBeforeMiB": self.before / MiB,
            "rssEndMiB": (self.now() or self.lastRss) / MiB,
            "hwmWorks": self.hwmWorks,
            "logLines": self.proc.logLines - self.logMark[0],
            "logBytes": self.proc.logBytes - self.logMark[1],
        }


# -- the bystander ----------------------------------------------------------

class Bystander(protocol.ProcessProtocol):
    """C{python -m tests.attacks bystander ...}: a well-behaved client."""

    def __init__(self) -> None:
        self.ready: defer.Deferred = defer.Deferred()
        self.result: defer.Deferred = defer.Deferred()
        self.ended: defer.Deferred = defer.Deferred()
        self.out = b""
        self.err = b""

    @classmethod
    async def start(cls, endpoint: str, user: str | None = None,
                    password: str | None = None) -> Bystander:
        proc = cls()
        argv = [sys.executable, "-m", "tests.attacks", "bystander", endpoint]
        if user is not None:
            argv += ["--user", user, "--password", password or ""]
        env = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")
        reactor.spawnProcess(proc, sys.executable, argv, env=env, path=ROOT)
        try:
            await proc.ready.addTimeout(30, reactor)
        except BaseException:
            await proc.kill()
            raise
        return proc

    def outReceived(self, data: bytes) -> None:
        self.out += data
        for line in self.out.decode("utf-8", "replace").splitlines():
            if line == "ready" and not self.ready.called:
                self.ready.callback(None)
            elif line.startswith("{") and line.endswith("}") and \
                    not self.result.called:
                self.result.callback(json.loads(line))

    def errReceived(self, data: bytes) -> None:
        if len(self.err) < 20000:
            self.err += data

    def processEnded(self, reason: Any) -> None:
        why = RuntimeError("the bystander ended:\n" + self.err.decode("utf-8", "replace")[-3000:])
        if not self.ready.called:
            self.ready.errback(why)
        if not self.result.called:
            self.result.errback(why)
        self.ended.callback(None)

    async def stop(self) -> dict[str, Any]:
        if not self.ended.called:
            self.transport.closeStdin()
        try:
            return await self.result.addTimeout(15, reactor)
        finally:
            await self.kill()

    async def kill(self) -> None:
        if not self.ended.called:
            try:
                self.transport.signalProcess("KILL")
            except netError.ProcessExitedAlready:
                pass
        await self.ended


async def _bystanderMain(argv: list[str]) -> None:
    import argparse

    from pydispatch import dispatcher
    from twisted.cred.credentials import UsernamePassword
    from twisted.internet import stdio

    from aurora import Client, signals
    from tests.app import IUserManager

    parser = argparse.ArgumentParser(prog="python -m tests.attacks bystander")
    parser.add_argument("endpoint")
    parser.add_argument("--user")
    parser.add_argument("--password")
    parser.add_argument("--interval", type=float, default=0.05)
    args = parser.parse_args(argv)
    creds = None
    if args.user is not None:
        creds = UsernamePassword(args.user.encode(), (args.password or "").encode())
    client = Client(args.endpoint, creds, connectTimeout=20, callTimeout=30,
                    heartbeat=5, reconnectDelay=0.2, maxReconnectDelay=1)
    registry = await client.getRegistry()
    users = await registry.getManager(IUserManager)
    await users.getUser("alice")
    stats: dict[str, Any] = dict(calls=0, failures=0, longest=0.0, disconnects=0,
                                 errors=[], unansweredAtStop=False)

    def down(**kw: Any) -> None:
        stats["disconnects"] += 1

    dispatcher.connect(down, signal=signals.disconnected, sender=client, weak=False)
    done: defer.Deferred = defer.Deferred()

    class Stdin(protocol.Protocol):
        def connectionLost(self, reason: Any) -> None:
            if not done.called:
                done.callback(None)

    stdio.StandardIO(Stdin())
    # However it is run, a bystander ends by itself after ten minutes.
    reactor.callLater(600, lambda: done.called or done.callback(None))
    inflight: list[float] = []

    async def loop() -> None:
        while not done.called:
            sent = reactor.seconds()
            inflight[:] = [sent]
            try:
                await users.getUser("alice")
            except Exception as e:
                stats["failures"] += 1
                if len(stats["errors"]) < 5:
                    stats["errors"].append(f"{type(e).__name__}: {e}"[:300])
            took = reactor.seconds() - sent
            inflight[:] = []
            stats["calls"] += 1
            stats["longest"] = max(stats["longest"], took)
            rest = args.interval - took
            if rest > 0 and not done.called:
                await task.deferLater(reactor, rest, lambda: None)

    print("ready", flush=True)
    running = defer.ensureDeferred(loop())
    running.addErrback(lambda f: stats["errors"].append(f.getErrorMessage()))
    await done
    if inflight:
        stats["unansweredAtStop"] = True
        stats["longest"] = max(stats["longest"], reactor.seconds() - inflight[0])
    print(json.dumps(stats), flush=True)
    os._exit(0)  # do not wait for a call in flight or a clean disconnect


# -- a raw PB peer: writes whatever it is told to, reads only if asked ---------

def _encodeNone(obj: Any) -> bytes:
    return _banana.encode(obj, vocabulary=None)


PREFIX = _encodeNone(b"pb") + _encodeNone([b"version", 6])
"""What a PB client says first: the banana dialect, then PB's version."""
NO_KW = [b"dictionary"]


def jargs(*values: Any) -> Any:
    """The jellied argument tuple of a call with these plain values."""
    return jellyPlain(tuple(values))


def describeError(sexp: Any) -> tuple[str, str]:
    """(dotted type name, message) of a jellied error answer."""
    if not (isinstance(sexp, list) and sexp and isinstance(sexp[0], bytes)):
        return type(sexp).__name__, repr(sexp)[:300]
    name = sexp[0].decode("utf-8", "replace")
    state: Any = {}
    if len(sexp) > 1:
        try:
            state = unjellyPlain(sexp[1])
        except NotPlain:
            state = {}
    if not isinstance(state, dict):
        state = {}
    message = state.get("message")
    if message is None:  # a pb.CopyableFailure
        value, kind = state.get("value"), state.get("type")
        kind = kind.decode() if isinstance(kind, bytes) else kind
        message = f"{kind}: {value}" if kind else repr(state)[:300]
    return name, message if isinstance(message, str) else repr(message)


class RawPeer(protocol.Protocol):
    """
    A PB peer made of bytes.  It speaks the opening (dialect, version), sends
    hand-made messages, decodes answers while C{decode} is set, and never
    answers anything the server sends it (no uncache, no pong).
    """

    def __init__(self, decode: bool = True) -> None:
        self.decode = decode
        self.ready: defer.Deferred = defer.Deferred()
        self.closed: defer.Deferred = defer.Deferred()
        self.waiting: dict[int, defer.Deferred] = {}
        self.lastID = 0
        self.received = 0
        self.other: dict[bytes, int] = {}
        self.decoder = _banana.Decoder(self._expression)
        self.view: Any = None
        self.disconnected = False
        self.port = 0
        self.closedAt: float | None = None

    def connectionMade(self) -> None:
        host = self.transport.getHost()
        self.port = getattr(host, "port", 0)
        sock = self._socket()
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport.write(PREFIX)

    def _socket(self) -> socket.socket | None:
        t = self.transport
        while t is not None and not hasattr(t, "socket"):
            t = getattr(t, "transport", None)
        return getattr(t, "socket", None)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if not self.decode:
            return
        try:
            self.decoder.feed(data)
        except Exception:
            self.decode = False  # not PB any more: just count

    def _expression(self, sexp: Any) -> None:
        if not isinstance(sexp, list) or not sexp:
            return
        kind = sexp[0]
        if kind == b"version" and not self.ready.called:
            self.ready.callback(self)
        elif kind in (b"answer", b"error") and len(sexp) == 3:
            d = self.waiting.pop(sexp[1], None)
            if d is not None:
                d.callback((kind.decode(), sexp[2]))
        elif isinstance(kind, bytes):
            self.other[kind] = self.other.get(kind, 0) + 1

    def connectionLost(self, reason: Any) -> None:
        self.disconnected = True
        self.closedAt = time.monotonic()
        waiting, self.waiting = self.waiting, {}
        for d in waiting.values():
            d.errback(netError.ConnectionDone("the server closed the connection"))
        if not self.ready.called:
            self.ready.errback(netError.ConnectionDone("closed before PB's version"))
        self.closed.callback(None)

    def nextID(self) -> int:
        self.lastID += 1
        return self.lastID

    def message(self, objectID: Any, method: bytes, args: Any, kw: Any = NO_KW,
                answer: bool = True, requestID: int | None = None,
                kind: bytes = b"message") -> bytes:
        """One encoded message (not sent)."""
        rid = self.nextID() if requestID is None else requestID
        return _banana.encode([kind, rid, objectID, method, 1 if answer else 0,
                               args, kw])

    def expect(self, requestID: int, timeout: float = 30) -> defer.Deferred:
        """A Deferred of (\"answer\" or \"error\", value) for C{requestID}."""
        d: defer.Deferred = defer.Deferred()
        if self.disconnected:
            d.errback(netError.ConnectionDone("closed"))
            return d
        self.waiting[requestID] = d
        return d.addTimeout(timeout, reactor)

    def call(self, objectID: Any, method: bytes, args: Any = None, kw: Any = NO_KW,
             timeout: float = 30) -> defer.Deferred:
        data = self.message(objectID, method, args if args is not None else [b"tuple"], kw)
        d = self.expect(self.lastID, timeout)
        self.transport.write(data)
        return d

    async def login(self, username: str | None = None, password: str | None = None,
                    timeout: float = 30) -> tuple[str, Any]:
        kind, value = await self.call(b"root", b"login", jargs(username, password),
                                      timeout=timeout)
        if kind == "answer" and isinstance(value, list) and len(value) > 1:
            self.view = value[1]
        return kind, value

    async def manager(self, name: str = USERS) -> Any:
        kind, value = await self.call(self.view, b"getManager", jargs(name))
        if kind != "answer":
            raise RuntimeError(f"getManager({name}) failed: {describeError(value)}")
        return value[1]

    def tcpState(self) -> int | None:
        """The socket's TCP state (1: established) or None if it is gone."""
        sock = self._socket()
        if sock is None or self.disconnected:
            return None
        try:
            info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)
        except OSError:
            return None
        return struct.unpack("B", info[:1])[0]

    def serverClosed(self) -> bool:
        """Whether the server has closed or reset this connection (even while
        this side does not read)."""
        if self.disconnected:
            return True
        state = self.tcpState()
        return state is not None and state != 1

    async def abort(self) -> None:
        if not self.closed.called:
            self.transport.abortConnection()
        await self.closed


async def rawConnect(port: int, *, trust: str | None = None, login: bool = True,
                     username: str | None = None, password: str | None = None,
                     decode: bool = True, timeout: float = 15) -> RawPeer:
    peer = RawPeer()
    if trust is not None:
        endpoint = clientFromString(
            reactor, f"tls:localhost:{port}:trustRoots={trust}:timeout=10")
    else:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10)
    await endpoint.connect(protocol.Factory.forProtocol(lambda: peer))
    try:
        await peer.ready.addTimeout(timeout, reactor)
        if login:
            kind, value = await peer.login(username, password, timeout=timeout)
            if kind != "answer":
                raise RuntimeError(f"login failed: {describeError(value)}")
    except BaseException:
        await peer.abort()
        raise
    peer.decode = decode
    return peer


class StockClient:
    """Twisted's own PB client (it answers whatever PB asks of it)."""

    async def connect(self, port: int) -> None:
        from twisted.spread import pb

        class Broker(pb.Broker):
            def receiveReference(self, luid: Any, names: Any, descriptions: Any) -> Any:
                return pb.RemoteReference(None, self, luid, 1)

        self.factory = pb.PBClientFactory()
        self.factory.protocol = Broker
        await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(self.factory)
        self.root = await self.factory.getRootObject().addTimeout(10, reactor)
        self.broker = self.root.broker
        self.port = self.broker.transport.getHost().port
        self.view = await self.root.callRemote("login", None, None).addTimeout(10, reactor)

    async def close(self) -> None:
        if not self.broker.disconnected:
            done: defer.Deferred = defer.Deferred()
            self.broker.notifyOnDisconnect(lambda: done.callback(None))
            self.factory.disconnect()
            await done


# -- a TCP proxy that records every byte ------------------------------------

# -- one attack's stage: server(s), bystander, monitor, cleanup --------------

@dataclass
class Result:
    name: str
    peakGrowthMiB: float | None = None
    cpuSeconds: float | None = None
    bystanderLongestMs: float | None = None
    bystanderFailures: int = 0
    bystanderCalls: int = 0
    alive: bool | None = None
    killedAtCap: bool = False
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    measures: dict[str, Any] = field(default_factory=dict)
    bystander: dict[str, Any] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.notes.append(text)


def supportedOptions() -> set[str]:
    from tests.attackserve import serverKeywords

    return set(serverKeywords())


class Stage:
    """
    Async context manager for one attack: starts what it is asked to, and
    on exit measures, stops the bystander, runs the cleanups, checks the
    measured server still answers, and kills every process.
    """

    def __init__(self, name: str, strict: bool = True) -> None:
        self.result = Result(name)
        self.strict = strict
        self.servers: list[AttackServer] = []
        self.cleanups: list[Callable[[], Any]] = []
        self.monitor: Monitor | None = None
        self.bystander: Bystander | None = None
        self.measured: AttackServer | None = None

    async def __aenter__(self) -> Stage:
        return self

    def optionArgs(self, options: dict[str, Any] | None) -> list[str]:
        options = dict(options or {})
        if not self.strict:
            known = supportedOptions()
            for name in [n for n in options if n not in known]:
                self.result.note(f"Server has no option {name} (not set)")
                del options[name]
        return [f"--option={k}={json.dumps(v)}" for k, v in options.items()]

    async def server(self, *args: str, options: dict[str, Any] | None = None,
                     measured: bool = True) -> AttackServer:
        proc = await AttackServer.start(*args, *self.optionArgs(options))
        self.servers.append(proc)
        if measured:
            self.measured = proc
        return proc

    async def watch(self, bystander: bool = True, user: str | None = None,
                    password: str | None = None) -> None:
        """Start the bystander (on the measured server), then measuring."""
        proc = self.measured
        if bystander:
            self.bystander = await Bystander.start(proc.endpoint(), user, password)
        self.monitor = Monitor(proc)
        self.monitor.begin()

    def later(self, cleanup: Callable[[], Any]) -> None:
        self.cleanups.append(cleanup)

    async def __aexit__(self, *exc: Any) -> bool:
        result = self.result
        try:
            if self.monitor is not None:
                m = self.monitor.end()
                result.measures.update(m)
                result.peakGrowthMiB = m["peakGrowthMiB"]
                result.cpuSeconds = m["cpuSeconds"]
                result.killedAtCap = self.monitor.killedAtCap
                if self.monitor.killedAtCap:
                    result.note(f"server killed: RSS passed the {RSS_CAP // MiB} MiB cap")
                if not m["hwmWorks"]:
                    result.note("clear_refs did not work: peak is sampled every 20 ms")
            if self.bystander is not None:
                try:
                    stats = await self.bystander.stop()
                except Exception as e:
                    stats = {"error": repr(e), "longest": None, "failures": 1, "calls": 0}
                result.bystander = stats
                if stats.get("longest") is not None:
                    result.bystanderLongestMs = stats["longest"] * 1000
                result.bystanderFailures = stats.get("failures", 0)
                result.bystanderCalls = stats.get("calls", 0)
            for cleanup in reversed(self.cleanups):
                try:
                    await defer.ensureDeferred(_asCoroutine(cleanup))
                except Exception as e:
                    result.note(f"cleanup failed: {e!r}")
            if self.measured is not None:
                result.alive = await isAlive(self.measured)
        finally:
            if self.bystander is not None:
                await self.bystander.kill()
            for proc in reversed(self.servers):  # a relay before its origin
                await proc.kill()
            if self.measured is not None:
                result.log = self.measured.lines
        return False


async def _asCoroutine(f: Callable[[], Any]) -> Any:
    value = f()
    if isinstance(value, (defer.Deferred,)) or hasattr(value, "__await__"):
        value = await value
    return value


async def isAlive(proc: AttackServer, attempts: int = 5) -> bool:
    """Whether the process runs and answers a ping on a new connection."""
    for attempt in range(attempts):
        if not proc.running:
            return False
        try:
            peer = await rawConnect(proc.port, trust=proc.trust, login=False, timeout=5)
        except Exception:
            peer = None
        if peer is not None:
            try:
                kind, _ = await peer.call(b"root", b"ping", jargs(), timeout=5)
                return kind == "answer"
            except Exception:
                pass
            finally:
                await peer.abort()
        # Refused (a full server that has not yet noticed the attackers
        # went): try again shortly, a bounded number of times.
        await task.deferLater(reactor, 0.3, lambda: None)
    return False


async def holdUntil(condition: Callable[[], bool], seconds: float,
                    every: float = 0.1) -> bool:
    """Poll C{condition} (no event exists for it) for at most C{seconds}."""
    deadline = time.monotonic() + seconds
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        await task.deferLater(reactor, min(every, max(0.0, deadline - time.monotonic())),
                              lambda: None)


async def firstOf(d: defer.Deferred, seconds: float) -> bool:
    """Whether C{d} fires within C{seconds} (the wait is bounded, not a sleep)."""
    waiter: defer.Deferred = defer.Deferred()
    d.addBoth(lambda r: (waiter.callback(True) if not waiter.called else None, r)[1])
    try:
        return await waiter.addTimeout(seconds, reactor)
    except defer.TimeoutError:
        return False


def outcome(failure_or_value: Any) -> dict[str, Any]:
    if isinstance(failure_or_value, BaseException):
        e = failure_or_value
        return {"ok": False, "type": f"{type(e).__module__}.{type(e).__name__}",
                "message": str(e)}
    return {"ok": True, "value": repr(failure_or_value)[:300]}


async def attempt(d: Any) -> dict[str, Any]:
    try:
        value = await d
    except Exception as e:
        return outcome(e)
    return outcome(value)


def _mib(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


# -- 1. decode amplification before login ------------------------------------

SUBLISTS = 24
EMPTY_LISTS = 655_360  # banana.SIZE_LIMIT: the most items one list may claim


def amplificationMessage(sublists: int = SUBLISTS, items: int = EMPTY_LISTS,
                         claim: int | None = None) -> bytes:
    """
    One banana list of C{sublists} lists of C{items} empty lists each: one
    byte on the wire per empty list (b"\\x80"), some 80 bytes in the decoder.
    With C{claim}, the outer header claims that many sublists (more than
    are sent: the message never completes).
    """
    sub = _banana.listHeader(items) + b"\x80" * items
    return _banana.listHeader(claim if claim is not None else sublists) + sub * sublists


async def attack1_whole(options: dict | None = None, strict: bool = True) -> Result:
    async with Stage("1a decode amplification: 15 MB of empty lists, whole", strict) as s:
        server = await s.server(options=options)
        await s.watch()
        peer = await rawConnect(server.port, login=False, decode=False)
        s.later(peer.abort)
        mark = len(server.lines)
        message = amplificationMessage()
        s.result.details["messageBytes"] = len(message)
        started = time.monotonic()
        peer.transport.write(message)
        closed = await firstOf(peer.closed, 30)
        s.result.details["closed"] = closed
        s.result.details["closedAfter"] = (peer.closedAt - started) if closed else None
        s.result.details["attackerPort"] = peer.port
        s.result.details["logMark"] = mark
        s.result.note(f"{len(message) / MiB:.1f} MiB sent; connection "
                      + (f"closed after {s.result.details['closedAfter']:.1f} s"
                         if closed else "still open after 30 s"))
    r = s.result
    lines = [l for l in r.log[r.details["logMark"]:] if mentions(r.details["attackerPort"])(l)]
    r.details["attackerLines"] = lines
    r.details["warnings"] = [l for l in lines if isWarning(l)]
    r.details["droppingLines"] = [l for l in lines if "dropping the connection" in l]
    r.note(f"{len(r.details['warnings'])} warning line(s) about it")
    return r


async def attack1_held(options: dict | None = None, strict: bool = True,
                       connections: int = 3, hold: float = 30.0) -> Result:
    async with Stage(f"1b the same, incomplete, held on {connections} connections",
                     strict) as s:
        server = await s.server(options=options)
        await s.watch()
        message = amplificationMessage(claim=SUBLISTS + 1)
        peers = []
        for _ in range(connections):
            peer = await rawConnect(server.port, login=False, decode=False)
            s.later(peer.abort)
            peers.append(peer)
        for peer in peers:
            peer.transport.write(message)
        # Held for the attack's duration, or until the server closes them all.
        await holdUntil(lambda: all(p.serverClosed() for p in peers)
                        or not server.running, hold, every=0.2)
        s.result.details["closed"] = [p.serverClosed() for p in peers]
        s.result.details["ports"] = [p.port for p in peers]
        s.result.details["serverRunning"] = server.running
        if server.running:
            s.result.note(f"{sum(s.result.details['closed'])} of {connections} "
                          f"connections closed by the server within {hold:.0f} s")
    r = s.result
    r.details["droppingLines"] = [l for l in r.log if "dropping the connection" in l]
    return r


async def attack1_cpu(options: dict | None = None, strict: bool = True,
                      repeat: int = 10) -> Result:
    async with Stage(f"1c 640 KB message of empty lists, x{repeat} (CPU)", strict) as s:
        server = await s.server(options=options)
        await s.watch()
        peer = await rawConnect(server.port, login=False)
        s.later(peer.abort)
        items = EMPTY_LISTS - 10
        # A well-formed call to the root's ping whose argument tuple holds
        # 640K empty lists (one byte each).
        args = _banana.listHeader(items + 1) + _banana.encode(b"tuple") + b"\x80" * items
        answers = []
        started = time.monotonic()
        for i in range(repeat):
            rid = peer.nextID()
            head = _banana.listHeader(7) + b"".join(
                _banana.encode(x) for x in (b"message", rid, b"root", b"ping", 1))
            d = peer.expect(rid, timeout=30)
            peer.transport.write(head + args + _banana.encode(NO_KW))
            try:
                kind, value = await d
                answers.append(describeError(value)[0] if kind == "error" else kind)
            except Exception as e:
                answers.append(type(e).__name__)
                break
        elapsed = time.monotonic() - started
        s.result.details["answers"] = answers
        s.result.details["messageBytes"] = len(args) + 20
        s.result.note(f"{len(answers)} answered ({', '.join(sorted(set(answers)))}) "
                      f"in {elapsed:.1f} s")
    r = s.result
    if r.cpuSeconds is not None and r.details.get("answers"):
        r.note(f"{r.cpuSeconds / len(r.details['answers']) * 1000:.0f} ms CPU per message")
    return r


# -- 2. a stall against the heartbeat watchdog -------------------------------

async def attack2_stall(options: dict | None = None, strict: bool = True,
                        items: int = 600_000) -> Result:
    from pydispatch import dispatcher

    from aurora import Client, signals
    from tests.app import IUserManager

    async with Stage("2 stall vs watchdog: a big legal call, heartbeat client 0.5 s",
                     strict) as s:
        server = await s.server(options=options)
        await s.watch()
        healthy = Client(f"tcp:127.0.0.1:{server.port}", heartbeat=0.5,
                         reconnectDelay=0.1, maxReconnectDelay=0.5, connectTimeout=10)
        s.later(healthy.stop)
        users = await (await healthy.getRegistry()).getManager(IUserManager)
        assert await users.echo(1) == 1
        healthyPort = healthy._broker.transport.getHost().port
        drops: list[float] = []

        def down(**kw: Any) -> None:
            drops.append(time.monotonic())

        dispatcher.connect(down, signal=signals.disconnected, sender=healthy, weak=False)
        s.later(lambda: dispatcher.disconnect(down, signal=signals.disconnected,
                                              sender=healthy, weak=False))
        peer = await rawConnect(server.port)
        s.later(peer.abort)
        luid = await peer.manager()
        peer.decode = False  # the answer is only counted
        # echo([None] * items): a legal call of ~4 bytes per item, in
        # lists of at most 640K items (banana's limit).
        chunks, left, body = [], items, []
        while left:
            n = min(left, EMPTY_LISTS - 1)
            chunks.append(n)
            left -= n
        body.append(_banana.listHeader(len(chunks) + 1) + _banana.encode(b"list"))
        none = _banana.encode([b"None"])
        for n in chunks:
            body.append(_banana.listHeader(n + 1) + _banana.encode(b"list") + none * n)
        args = _banana.listHeader(2) + _banana.encode(b"tuple") + b"".join(body)
        rid = peer.nextID()
        head = _banana.listHeader(7) + b"".join(
            _banana.encode(x) for x in (b"message", rid, luid, b"echo", 1))
        data = head + args + _banana.encode(NO_KW)
        s.result.details["messageBytes"] = len(data)
        before = peer.received
        started = time.monotonic()
        peer.transport.write(data)
        # The answer is about as large as the call: wait until it is in.
        answered = await holdUntil(lambda: peer.received - before >= len(data) * 0.9
                                   or peer.disconnected, 30, every=0.05)
        took = time.monotonic() - started
        # Give both watchdogs (0.875 s) time to act on the stall.
        await task.deferLater(reactor, 2.0, lambda: None)
        s.result.details["answered"] = answered
        s.result.details["answerSeconds"] = took
        s.result.details["healthyDrops"] = len(drops)
        s.result.details["healthyConnected"] = healthy.connected
        s.result.details["healthyPort"] = healthyPort
        s.result.note(f"{len(data) / MiB:.1f} MiB echo answered in {took:.1f} s; "
                      f"heartbeat client dropped {len(drops)} time(s)")
    r = s.result
    # Which side gave up: the server's watchdog logs it; the client's does not.
    r.details["serverDropLines"] = [
        l for l in r.log if mentions(healthyPort)(l) and "dropping" in l]
    if r.details["healthyDrops"]:
        r.note("by the server's watchdog" if r.details["serverDropLines"]
               else "by its own watchdog (the server logged no drop)")
    return r


# -- 3. a caller that never reads ---------------------------------------------

def amplifiedEcho(peer: RawPeer, luid: Any, answerBytes: int = 500_000,
                  piece: int = 1000) -> bytes:
    """
    A call to echo whose answer is C{answerBytes} while the call is ~1% of
    that: one string, then jelly back-references to it.
    """
    count = answerBytes // piece
    value = [b"list", [b"reference", 1, b"x" * piece]] + [[b"dereference", 1]] * (count - 1)
    return peer.message(luid, b"echo", [b"tuple", value])


async def attack3_neverReads(options: dict | None = None, strict: bool = True,
                             calls: int = 4000, hold: float = 25.0) -> Result:
    async with Stage(f"3 never-reading caller: {calls} pipelined 500 KB answers",
                     strict) as s:
        server = await s.server(options=options)
        await s.watch()
        peer = await rawConnect(server.port)
        s.later(peer.abort)
        luid = await peer.manager()
        peer.transport.pauseProducing()  # never read again
        batch = b"".join(amplifiedEcho(peer, luid) for _ in range(calls))
        s.result.details["requestBytes"] = len(batch)
        started = time.monotonic()
        peer.transport.write(batch)
        timeline = []
        closedAt = None
        for second in range(int(hold)):
            if await holdUntil(peer.serverClosed, 1.0, every=0.1):
                closedAt = time.monotonic() - started
                break
            timeline.append(round((s.monitor.now() or 0) / MiB))
        s.result.details["closedAfter"] = closedAt
        s.result.details["timelineMiB"] = timeline
        s.result.details["growthWhileHeldMiB"] = s.monitor.growth()
        s.result.details["rssHeldMiB"] = (s.monitor.now() or 0) / MiB
        before = s.monitor.before
        await peer.abort()
        # RSS after the disconnect: polled (there is no event for it).
        await holdUntil(lambda: (s.monitor.now() or 0) - before < 64 * MiB, 5, every=0.1)
        after = s.monitor.now()
        s.result.details["rssAfterDisconnectMiB"] = None if after is None else after / MiB
        s.result.details["afterDisconnectGrowthMiB"] = \
            None if after is None else (after - before) / MiB
        s.result.note(
            ("server closed it after %.1f s; " % closedAt if closedAt is not None
             else f"still connected after {hold:.0f} s; ")
            + f"RSS {s.result.details['rssHeldMiB']:,.0f} MiB held, "
            + (f"{after / MiB:,.0f} MiB after disconnect" if after else "process gone"))
    return s.result


# -- 4. model atoms held for a peer ------------------------------------------

def modelAtoms(first: int, count: int) -> list[Any]:
    return [[b"tests.app.UserModel", first + i, [b"dictionary"]] for i in range(count)]


async def attack4_modelAtoms(options: dict | None = None, strict: bool = True,
                             batches: tuple[int, ...] = (1000,) + (50_000,) * 10
                             ) -> Result:
    total = sum(batches)
    async with Stage(f"4 model atoms: {total:,} in {len(batches)} calls", strict) as s:
        server = await s.server(options=options)
        await s.watch()
        peer = await rawConnect(server.port)
        s.later(peer.abort)
        luid = await peer.manager()
        answers = []
        nextLuid = 1
        for n in batches:
            value = [b"list"] + modelAtoms(nextLuid, n)
            nextLuid += n
            try:
                kind, got = await peer.call(luid, b"echo", [b"tuple", value], timeout=60)
                answers.append("answer" if kind == "answer" else describeError(got)[0])
            except Exception as e:
                answers.append(type(e).__name__)
                break
        s.result.details["answers"] = answers
        s.result.details["heldMiB"] = (s.monitor.now() or 0) / MiB - s.monitor.before / MiB
        s.result.details["decachesReceived"] = peer.other.get(b"decache", 0)
        s.result.note(f"answers: {_summarize(answers)}; "
                      f"{s.result.details['heldMiB']:,.0f} MiB still held after")
    return s.result


def _summarize(items: list[str]) -> str:
    out: list[str] = []
    for item in items:
        if out and out[-1].rsplit(" x", 1)[0] == item:
            name, _, n = out[-1].rpartition(" x")
            out[-1] = f"{name} x{int(n) + 1}"
        else:
            out.append(f"{item} x1")
    return ", ".join(o.replace("aurora.errors.", "") for o in out)


# -- 5. the relay's allow-list -------------------------------------------------

async def attack5_relayAllowList(options: dict | None = None,
                                 strict: bool = True) -> Result:
    from aurora import Client
    from tests.app import IAdmin, IUserManager

    async with Stage("5 relay allow-list: IAdmin through IUserManager.getAdmin",
                     strict) as s:
        origin = await s.server(measured=False)
        await s.server("--relay-upstream", str(origin.port), "--allow", USERS,
                       options=options)
        await s.watch()
        client = Client(s.measured.endpoint(), heartbeat=None, connectTimeout=20)
        s.later(client.stop)
        registry = await client.getRegistry()
        d = s.result.details
        d["direct"] = await attempt(registry.getManager(IAdmin))
        users = await registry.getManager(IUserManager)
        admin: list[Any] = []

        async def getAdmin() -> Any:
            admin.append(await users.getAdmin())
            return admin[-1]

        d["getAdmin"] = await attempt(getAdmin())
        if admin:
            d["adminProvidesIAdmin"] = IAdmin.providedBy(admin[0])
            d["ping"] = await attempt(admin[0].ping())
        s.result.note(f"registry.getManager(IAdmin): "
                      f"{_short(d['direct'])}; users.getAdmin(): {_short(d['getAdmin'])}"
                      + (f"; admin.ping(): {_short(d['ping'])}" if "ping" in d else ""))
    return s.result


def _short(o: dict[str, Any]) -> str:
    if o["ok"]:
        return f"ok {o['value'][:40]}"
    return f"{o['type'].rsplit('.', 1)[-1]}"


# -- 6. login ------------------------------------------------------------------

def _passwordFile(directory: str) -> str:
    from aurora import auth

    path = os.path.join(directory, "passwd")
    auth.setPassword(path, "alice", PASSWORD)
    return path


async def _loginStage(s: Stage, options: dict | None) -> AttackServer:
    directory = tempfile.mkdtemp(prefix="aurora-attack-")
    s.later(lambda: shutil.rmtree(directory, True))
    server = await s.server("--tls", "--password-file", _passwordFile(directory),
                            options=options)
    await s.watch(user="alice", password=PASSWORD)
    return server


async def attack6_pipelined(options: dict | None = None, strict: bool = True,
                            count: int = 60, budget: float = 20.0) -> Result:
    async with Stage(f"6a {count} pipelined wrong passwords, one TLS connection",
                     strict) as s:
        server = await _loginStage(s, options)
        peer = await rawConnect(server.port, trust=server.trust, login=False)
        s.later(peer.abort)
        started = time.monotonic()
        waits = []
        data = []
        for i in range(count):
            data.append(peer.message(b"root", b"login", jargs("alice", f"wrong{i}")))
            waits.append(peer.expect(peer.lastID, timeout=budget))
        peer.transport.write(b"".join(data))
        results = await defer.DeferredList(waits, consumeErrors=True)
        kinds = [describeError(v[1])[0] if ok and v[0] == "error" else
                 (v[0] if ok else type(v.value).__name__) for ok, v in results]
        s.result.details["answers"] = kinds
        s.result.details["seconds"] = time.monotonic() - started
        s.result.details["open"] = not peer.serverClosed()
        s.result.note(f"{_summarize(kinds)} in {s.result.details['seconds']:.1f} s")
    return s.result


async def attack6_oneConnection(options: dict | None = None, strict: bool = True,
                                count: int = 45, budget: float = 110.0) -> Result:
    async with Stage(f"6b {count} wrong passwords one after another, one connection",
                     strict) as s:
        server = await _loginStage(s, options)
        peer = await rawConnect(server.port, trust=server.trust, login=False)
        s.later(peer.abort)
        times, kinds = [], []
        deadline = time.monotonic() + budget
        for i in range(count):
            left = deadline - time.monotonic()
            if left <= 0 or peer.serverClosed():
                break
            t0 = time.monotonic()
            try:
                kind, value = await peer.call(b"root", b"login",
                                              jargs("alice", f"wrong{i}"),
                                              timeout=min(10.0, left))
                kinds.append(describeError(value)[0] if kind == "error" else kind)
            except Exception as e:
                kinds.append(type(e).__name__)
                times.append(time.monotonic() - t0)
                break
            times.append(time.monotonic() - t0)
        d = s.result.details
        d["times"] = times
        d["answers"] = kinds
        d["open"] = not peer.serverClosed()
        s.result.note(f"{len(times)} attempts, connection "
                      + ("still open" if d["open"] else "closed")
                      + (f"; first {times[0] * 1000:.0f} ms, last {times[-1] * 1000:.0f} ms"
                         if times else ""))
    return s.result


async def attack6_oracle(options: dict | None = None, strict: bool = True,
                         each: int = 15) -> Result:
    async with Stage(f"6c timing oracle: unknown user vs wrong password ({each} each)",
                     strict) as s:
        server = await _loginStage(s, options)
        samples: dict[str, list[float]] = {"unknown": [], "known": []}
        for i in range(each):
            for who, name in (("unknown", f"nobody{i}"), ("known", "alice")):
                peer = await rawConnect(server.port, trust=server.trust, login=False)
                try:
                    t0 = time.monotonic()
                    await peer.call(b"root", b"login", jargs(name, f"wrong{i}"), timeout=15)
                    samples[who].append(time.monotonic() - t0)
                finally:
                    await peer.abort()
        d = s.result.details
        d["unknownMedianMs"] = statistics.median(samples["unknown"]) * 1000
        d["knownMedianMs"] = statistics.median(samples["known"]) * 1000
        s.result.note(f"median unknown user {d['unknownMedianMs']:.1f} ms, known user "
                      f"wrong password {d['knownMedianMs']:.1f} ms")
    return s.result


# -- 7. idle connections --------------------------------------------------------

async def _openIdle(port: int, count: int, parallel: int = 50) -> tuple[list[RawPeer], int]:
    """C{count} raw connections that log in and then say nothing at all."""
    admitted: list[RawPeer] = []
    refused = 0

    async def one() -> None:
        nonlocal refused
        try:
            peer = await rawConnect(port, timeout=10)
        except Exception:
            refused += 1
            return
        peer.loggedInAt = time.monotonic()
        admitted.append(peer)

    for start in range(0, count, parallel):
        await defer.gatherResults([defer.ensureDeferred(one())
                                   for _ in range(min(parallel, count - start))],
                                  consumeErrors=True)
    return admitted, refused


async def attack7_idle(options: dict | None = None, strict: bool = True,
                       idle: int = 300, watchFor: float | None = None) -> Result:
    from aurora import Client

    options = dict(options or {"maxConnections": 20})
    async with Stage(f"7a {idle} idle connections, maxConnections="
                     f"{options.get('maxConnections')}", strict) as s:
        server = await s.server(options=options)
        await s.watch()
        stock = StockClient()
        await stock.connect(server.port)
        s.later(stock.close)
        peers, refused = await _openIdle(server.port, idle)
        for p in peers:
            s.later(p.abort)
        d = s.result.details
        d["admitted"], d["refused"] = len(peers), refused
        d["idlePorts"] = [p.port for p in peers]
        mark = len(server.lines)
        late = Client(f"tcp:127.0.0.1:{server.port}", heartbeat=None, connectTimeout=3,
                      reconnectDelay=0.1, maxReconnectDelay=0.5)
        s.later(late.stop)
        t0 = time.monotonic()
        d["newClient"] = await attempt(late.getRegistry())
        d["newClientSeconds"] = time.monotonic() - t0
        await late.stop()
        idleTimeout = options.get("idleTimeout")
        wait = watchFor if watchFor is not None else (
            2 * idleTimeout + 1.5 if idleTimeout else 5.0)
        started = time.monotonic()
        await holdUntil(lambda: all(p.serverClosed() for p in peers), wait, every=0.1)
        d["idleWaited"] = time.monotonic() - started
        d["idleClosed"] = sum(p.serverClosed() for p in peers)
        d["idleClosedAfter"] = [None if p.closedAt is None else p.closedAt - p.loggedInAt
                                for p in peers]
        d["stockConnected"] = not stock.broker.disconnected
        d["logMark"] = mark
        s.result.note(f"{len(peers)} admitted, {refused} refused; new client: "
                      f"{_short(d['newClient'])} after {d['newClientSeconds']:.1f} s; "
                      f"{d['idleClosed']} of {len(peers)} idle closed within "
                      f"{d['idleWaited']:.0f} s; stock PB client "
                      + ("connected" if d["stockConnected"] else "dropped"))
    r = s.result
    r.details["limitLines"] = [l for l in r.log if "connection limit" in l]
    return r


async def attack7_slowloris(options: dict | None = None, strict: bool = True,
                            seconds: int = 12) -> Result:
    async with Stage(f"7b slowloris after login: 1 byte/s for {seconds} s", strict) as s:
        server = await s.server(options=options)
        await s.watch()
        peer = await rawConnect(server.port)
        s.later(peer.abort)
        luid = await peer.manager()
        data = amplifiedEcho(peer, luid, answerBytes=10_000)
        sent = 0
        for i in range(min(seconds, len(data) - 1)):
            if peer.serverClosed():
                break
            peer.transport.write(data[i:i + 1])
            sent += 1
            await task.deferLater(reactor, 1.0, lambda: None)  # the attack's pace
        d = s.result.details
        d["bytesSent"] = sent
        d["open"] = not peer.serverClosed()
        s.result.note(f"{sent} bytes trickled; connection "
                      + ("still open" if d["open"] else "closed by the server"))
    return s.result


# -- 8. relay starvation ---------------------------------------------------------

async def attack8_relayStarvation(options: dict | None = None, strict: bool = True,
                                  models: int = 20_000,
                                  originLimit: int | None = 20_000) -> Result:
    """
    A downstream client asks the relay for a high reference limit at hello,
    before login, then holds C{models} model mirrors: the relay's one
    upstream link (whose limit the origin caps at C{originLimit}, scaled
    down from aurora's 100,000 to keep the attack short) is shared by every
    downstream client.
    """
    from aurora import Client
    from tests.app import IUserManager

    name = (f"8 relay: hello(referenceLimit=100000), then {models:,} models"
            + (f" (origin maxReferenceLimit={originLimit:,})" if originLimit else ""))
    async with Stage(name, strict) as s:
        origin = await s.server(measured=False, options=(
            {"maxReferenceLimit": originLimit} if originLimit else None))
        await s.server("--relay-upstream", str(origin.port), options=options)
        await s.watch()
        greedy = Client(s.measured.endpoint(), heartbeat=None, connectTimeout=20,
                        callTimeout=60, referenceLimit=100_000)
        s.later(greedy.stop)
        other = Client(s.measured.endpoint(), heartbeat=None, connectTimeout=20,
                       callTimeout=20)
        s.later(other.stop)
        users = await (await greedy.getRegistry()).getManager(IUserManager)
        held: list[Any] = []

        async def hoard() -> int:
            held.append(await users.makeModels(models))
            return len(held[-1])

        d = s.result.details
        t0 = time.monotonic()
        d["greedy"] = await attempt(hoard())
        d["greedySeconds"] = time.monotonic() - t0
        otherUsers = await (await other.getRegistry()).getManager(IUserManager)
        d["other"] = await attempt(otherUsers.getModel("alice"))
        d["otherUser"] = await attempt(otherUsers.getUser("bob"))
        s.result.note(f"greedy makeModels({models:,}): {_short(d['greedy'])} in "
                      f"{d['greedySeconds']:.1f} s; other client's getModel: "
                      f"{_short(d['other'])}, getUser: {_short(d['otherUser'])}")
        held.clear()
    r = s.result
    r.details["upstreamLost"] = sum("lost the connection to" in l for l in r.log)
    if r.details["upstreamLost"]:
        r.note(f"the relay lost its upstream {r.details['upstreamLost']} time(s)")
    return r


async def attack8_relayOneCall(options: dict | None = None, strict: bool = True) -> Result:
    """The unscaled version: 100,000 models in one call through the relay."""
    r = await attack8_relayStarvation(options, strict, models=100_000, originLimit=None)
    r.name = "8b " + r.name[2:]
    return r


# -- 9. a password over plain TCP ---------------------------------------------

async def attack9_plainPassword(options: dict | None = None, strict: bool = True) -> Result:
    from twisted.cred.credentials import UsernamePassword

    from aurora import Client

    async with Stage("9 password login over plain TCP (recording proxy)", strict) as s:
        directory = tempfile.mkdtemp(prefix="aurora-attack-")
        s.later(lambda: shutil.rmtree(directory, True))
        server = await s.server("--password-file", _passwordFile(directory),
                                options=options)
        await s.watch(bystander=False)
        proxy = RecordingProxy(server.port)
        proxyPort = await proxy.start()
        s.later(proxy.stop)
        client = Client(f"tcp:127.0.0.1:{proxyPort}",
                        UsernamePassword(b"alice", PASSWORD.encode()),
                        heartbeat=None, connectTimeout=10)
        s.later(client.stop)
        d = s.result.details
        d["getRegistry"] = await attempt(client.getRegistry())
        await client.stop()
        d["capturedBytes"] = len(proxy.captured)
        d["passwordSeen"] = PASSWORD.encode() in bytes(proxy.captured)
        s.result.note(f"getRegistry: {_short(d['getRegistry'])}; the password "
                      + ("WAS" if d["passwordSeen"] else "was not")
                      + f" in the {d['capturedBytes']:,} bytes captured")
    return s.result


# -- 10. log flooding ---------------------------------------------------------------

async def attack10_bogusMessages(options: dict | None = None, strict: bool = True,
                                 totalBytes: int = 1_000_000) -> Result:
    async with Stage("10a 1 MB of bogus PB messages (unknown cache id, list as id)",
                     strict) as s:
        server = await s.server(options=options)
        await s.watch()
        peer = await rawConnect(server.port)
        s.later(peer.abort)
        start = await server.waitFor(lambda l: mentions(peer.port)(l)
                                     and "logged in" in l)
        parts, size, count = [], 0, 0
        while size < totalBytes:
            if count % 2:
                m = peer.message([count, count], b"echo", [b"tuple"])
            else:
                m = peer.message(10_000_000 + count, b"update", [b"tuple"],
                                 kind=b"cachemessage")
            parts.append(m)
            size += len(m)
            count += 1
        d = s.result.details
        d["messages"], d["bytes"] = count, size
        logBefore = (server.logLines, server.logBytes)
        t0 = time.monotonic()
        # A ping right behind the flood: PB answers in order, so its answer
        # means every bogus message before it was handled (answered or not).
        parts.append(peer.message(b"root", b"ping", jargs()))
        ping = peer.expect(peer.lastID, timeout=60)
        peer.transport.write(b"".join(parts))
        ping = await attempt(ping)
        d["seconds"] = time.monotonic() - t0
        d["stillServed"] = ping["ok"]
        d["open"] = not peer.serverClosed()
        await peer.abort()
        try:
            stop = await server.waitFor(lambda l: mentions(peer.port)(l)
                                        and "disconnected" in l, start, timeout=30)
        except Exception:
            stop = len(server.lines)
        window = server.lines[start:stop + 1]
        d["lines"] = [l for l in window if not _aboutOtherPeer(l, peer.port)]
        d["tracebacks"] = sum(isTraceback(l) for l in d["lines"])
        d["logBytes"] = server.logBytes - logBefore[1]
        d["logLinesTotal"] = server.logLines - logBefore[0]
        s.result.note(f"{count:,} messages; server log +{d['logBytes'] / MiB:,.1f} MiB, "
                      f"{d['logLinesTotal']:,} lines, {d['tracebacks']:,} tracebacks; "
                      "connection " + ("still served" if d["stillServed"] else "closed"))
    return s.result


def _aboutOtherPeer(line: str, port: int) -> bool:
    ports = {int(p) for p in _PORT.findall(line)}
    return bool(ports) and port not in ports


async def attack10_raising(options: dict | None = None, strict: bool = True,
                           calls: int = 1000, summaryWait: float = 10.0) -> Result:
    from aurora import Client
    from tests.app import IUserManager

    async with Stage(f"10b a method raising ValueError, called {calls:,} times", strict) as s:
        server = await s.server(options=options)
        await s.watch()
        client = Client(f"tcp:127.0.0.1:{server.port}", heartbeat=None, connectTimeout=10)
        s.later(client.stop)
        users = await (await client.getRegistry()).getManager(IUserManager)
        await users.echo(1)
        start = len(server.lines)
        results = []
        for first in range(0, calls, 100):
            batch = [attempt(users.fail("value")) for _ in range(min(100, calls - first))]
            results += await defer.gatherResults([defer.ensureDeferred(b) for b in batch])
        d = s.result.details
        d["errors"] = sorted({r.get("type", "ok") for r in results})
        await users.echo(2)  # every failure before this is logged by now
        d["tracebacksAtOnce"] = len(server.find(isTraceback, start))
        # The count of lines left out comes with a later line: wait for it,
        # failing once a second meanwhile (a limiter that reports with its
        # next admitted line needs one after its interval).
        summary = server.waitFor(lambda l: "more like it" in l, start,
                                 timeout=summaryWait)
        summary.addErrback(lambda f: None)
        for _ in range(int(summaryWait)):
            if summary.called:
                break
            await attempt(users.fail("value"))
            await firstOf(summary, 1.0)
        await summary
        d["lines"] = server.lines[start:]
        d["tracebacks"] = sum(isTraceback(l) for l in d["lines"])
        d["summaryLines"] = [l for l in d["lines"] if "more like it" in l]
        s.result.note(f"client got {', '.join(d['errors'])}; {d['tracebacksAtOnce']:,} "
                      f"tracebacks for the {calls:,} calls; 'more like it' lines "
                      f"within {summaryWait:.0f} s after: {len(d['summaryLines'])}")
    return s.result


# -- 11, 12: what reaches the caller, and a dangling local reference ------------

async def attack11_secretInError(options: dict | None = None, strict: bool = True) -> Result:
    from aurora import Client
    from tests.app import IUserManager

    async with Stage("11 RuntimeError with a secret: what reaches the caller", strict) as s:
        server = await s.server(options=options)
        await s.watch(bystander=False)
        client = Client(f"tcp:127.0.0.1:{server.port}", heartbeat=None, connectTimeout=10)
        s.later(client.stop)
        users = await (await client.getRegistry()).getManager(IUserManager)
        start = len(server.lines)
        d = s.result.details
        d["call"] = await attempt(users.fail(SECRET))
        await users.echo(1)  # the log line is written by now
        d["logMark"] = start
        msg = d["call"].get("message", "")
        d["secretReachedCaller"] = "hunter2" in msg
        s.result.note(f"{_short(d['call'])}: {msg[:90]!r}")
    r = s.result
    r.details["lines"] = r.log[r.details["logMark"]:]
    return r


def correlationIds(message: str) -> list[str]:
    """Tokens in C{message} that may be an id: 6+ characters, with a digit."""
    return [t for t in re.findall(r"[0-9A-Za-z][0-9A-Za-z_-]{5,}", message)
            if any(c.isdigit() for c in t)]


async def attack12_danglingLocal(options: dict | None = None, strict: bool = True) -> Result:
    async with Stage('12 ["local", 999999] as an argument', strict) as s:
        server = await s.server(options=options)
        await s.watch(bystander=False)
        peer = await rawConnect(server.port)
        s.later(peer.abort)
        luid = await peer.manager()
        kind, value = await peer.call(luid, b"echo", [b"tuple", [b"local", 999999]])
        d = s.result.details
        d["kind"] = kind
        if kind == "error":
            d["error"], d["message"] = describeError(value)
        else:
            d["value"] = repr(value)
        if kind == "answer":
            try:
                d["value"] = repr(unjellyPlain(value))
            except NotPlain:
                pass
        s.result.note("echo answered " + (d["value"] if kind == "answer"
                                          else f"{d['error']}: {d['message'][:70]}"))
    return s.result


# -- the table ----------------------------------------------------------------------

ATTACKS: dict[str, Callable[..., Awaitable[Result]]] = {
    "1a": attack1_whole,
    "1b": attack1_held,
    "1c": attack1_cpu,
    "2": attack2_stall,
    "3": attack3_neverReads,
    "4": attack4_modelAtoms,
    "5": attack5_relayAllowList,
    "6a": attack6_pipelined,
    "6b": attack6_oneConnection,
    "6c": attack6_oracle,
    "7a": attack7_idle,
    "7b": attack7_slowloris,
    "8": attack8_relayStarvation,
    "8b": attack8_relayOneCall,
    "9": attack9_plainPassword,
    "10a": attack10_bogusMessages,
    "10b": attack10_raising,
    "11": attack11_secretInError,
    "12": attack12_danglingLocal,
}


def formatRow(r: Result) -> str:
    peak = _mib(r.peakGrowthMiB)
    if r.killedAtCap:
        peak = f">{RSS_CAP // MiB:,}"
    cpu = "-" if r.cpuSeconds is None else f"{r.cpuSeconds:.2f}"
    if r.bystanderLongestMs is None:
        byst = "-"
    else:
        byst = f"{r.bystanderLongestMs:,.0f}"
        if r.bystanderFailures:
            byst += f" ({r.bystanderFailures} failed)"
    alive = {True: "yes", False: "NO", None: "-"}[r.alive]
    return (f"{r.name[:72]:<72} {peak:>8} {cpu:>7} {byst:>16} {alive:>5}  "
            + "; ".join(r.notes))


HEADER = (f"{'attack':<72} {'RSS+MiB':>8} {'CPU s':>7} {'bystander ms':>16} "
          f"{'alive':>5}  notes")


async def runAll(names: list[str]) -> list[Result]:
    results = []
    for name in names:
        t0 = time.monotonic()
        try:
            r = await ATTACKS[name](strict=False)
        except Exception as e:
            import traceback

            traceback.print_exc()
            r = Result(f"{name} (harness failed)")
            r.note(f"{type(e).__name__}: {e}"[:300])
        results.append(r)
        print(formatRow(r), f"[{time.monotonic() - t0:.0f} s]", file=sys.stderr,
              flush=True)
    return results


def main(argv: list[str]) -> None:
    if argv[:1] == ["bystander"]:
        task.react(lambda _: defer.ensureDeferred(_bystanderMain(argv[1:])))
        return
    import argparse
    import platform

    parser = argparse.ArgumentParser(prog="python -m tests.attacks")
    parser.add_argument("--only", help="comma-separated attack keys: "
                        + ",".join(ATTACKS))
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(ATTACKS)

    async def run(_: Any) -> None:
        started = time.monotonic()
        results = await runAll(names)
        print(f"aurora attack suite (issue #11), {time.strftime('%Y-%m-%d %H:%M')}, "
              f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
              f"aurora from {ROOT}")
        print("server: peak RSS growth (VmHWM after - VmRSS before), CPU seconds used; "
              "bystander: longest getUser wait (calls every 50 ms)")
        print()
        print(HEADER)
        for r in results:
            print(formatRow(r))
        print(f"\n({time.monotonic() - started:.0f} s)")

    task.react(lambda reactor: defer.ensureDeferred(run(reactor)))


if __name__ == "__main__":
    main(sys.argv[1:])
