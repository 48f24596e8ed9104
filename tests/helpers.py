"""Test helpers: server processes, a partitionable TCP proxy, signal waiters."""

from __future__ import annotations

import contextlib
import os
import sys
from types import SimpleNamespace
from typing import Any, AsyncIterator

from pydispatch import dispatcher
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ServerProcess(protocol.ProcessProtocol):
    """
    C{python -m tests.serve} in a process of its own.  C{ready} fires with
    the port once it serves; C{ended} when the process is gone.
    """

    def __init__(self, *args: str) -> None:
        self.args = args
        self.ready: defer.Deferred = defer.Deferred()
        self.ended: defer.Deferred = defer.Deferred()
        self.output = b""
        self.errors = b""

    @classmethod
    async def start(cls, port: int = 0, *args: str) -> ServerProcess:
        proc = cls(*args)
        env = dict(os.environ, PYTHONPATH=ROOT)
        reactor.spawnProcess(
            proc, sys.executable,
            [sys.executable, "-m", "tests.serve",
             f"tcp:{port}:interface=127.0.0.1", *args],
            env=env, path=ROOT,
        )
        proc.port = await proc.ready.addTimeout(30, reactor)
        return proc

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if not self.ready.called and b"listening on " in self.output:
            line = self.output.split(b"listening on ", 1)[1].split(b"\n", 1)[0]
            self.ready.callback(int(line))

    def errReceived(self, data: bytes) -> None:
        self.errors += data

    def processEnded(self, reason) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(
                "server process ended before serving:\n"
                + self.errors.decode("utf-8", "replace")))
        self.ended.callback(None)

    async def kill(self) -> None:
        if not self.ended.called:
            self.transport.signalProcess("KILL")
        await self.ended


# A relay that cannot import the test application even if it tried: run from
# an empty directory, without PYTHONPATH, with the package blocked.
_RELAY = """
import sys
sys.modules["tests"] = None
from twisted.internet import defer, task
from aurora.relay import main
task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1:])))
"""


# The bare relay the README shows, Server(client.registry), likewise without
# the application's modules.
_BARE_RELAY = """
import sys
sys.modules["tests"] = None
from twisted.internet import defer, task
from aurora import Client, Server

async def main(reactor, upstream, listen):
    client = Client(upstream, reactor=reactor, connectTimeout=None, heartbeat=0.5)
    port = await Server(client.registry, reactor=reactor).listen(listen)
    client.start()
    print(f"listening on {port.getHost().port}", flush=True)
    await defer.Deferred()

task.react(lambda reactor: defer.ensureDeferred(main(reactor, *sys.argv[1:])))
"""


class RelayProcess(ServerProcess):
    """C{python -m aurora.relay} in a process that has no application code."""

    @classmethod
    async def start(cls, upstreamPort: int, port: int = 0, *args: str,
                    workdir: str = "/", bare: bool = False) -> RelayProcess:
        proc = cls()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        upstream = f"tcp:127.0.0.1:{upstreamPort}"
        listen = f"tcp:{port}:interface=127.0.0.1"
        argv = [sys.executable, "-c", _BARE_RELAY, upstream, listen] if bare else [
            sys.executable, "-c", _RELAY, "--upstream", upstream, "--listen", listen, *args]
        reactor.spawnProcess(proc, sys.executable, argv, env=env, path=workdir)
        proc.port = await proc.ready.addTimeout(30, reactor)
        proc.upstreamPort = upstreamPort
        return proc


def memory(pid: int) -> dict[str, int]:
    """A process's resident memory now (VmRSS) and at its peak (VmHWM), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return {k: int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM")}


def resetPeak(pid: int) -> None:
    """Start measuring C{pid}'s peak resident memory (VmHWM) from now."""
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


class SignalLog:
    """Records one pydispatcher signal from one sender; C{next()} waits."""

    def __init__(self, signal: str, sender) -> None:
        self.signal, self.sender = signal, sender
        self.events: list[dict] = []
        self._waiting: list[defer.Deferred] = []
        dispatcher.connect(self, signal=signal, sender=sender, weak=False)

    def __call__(self, **kw) -> None:
        kw.pop("signal", None)
        kw.pop("sender", None)
        self.events.append(kw)
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(kw)

    def next(self, timeout: float = 30) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        return d.addTimeout(timeout, reactor)

    def close(self) -> None:
        dispatcher.disconnect(self, signal=self.signal, sender=self.sender, weak=False)


def forgetSenders() -> None:
    """
    Drop pydispatcher's weak sender references, whose callbacks otherwise run
    into a half-torn-down module at interpreter exit.
    """
    dispatcher.connections.clear()
    dispatcher.senders.clear()
    dispatcher.sendersBack.clear()


class _Pipe(protocol.Protocol):
    peer: _Pipe | None = None

    def __init__(self, proxy: PartitionProxy) -> None:
        self.proxy = proxy
        self.buffered: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        if self.proxy.partitioned:
            return  # dropped, as by a partition: no RST, no FIN
        if self.peer is None:
            self.buffered.append(data)
        else:
            self.peer.transport.write(data)

    def connectionLost(self, reason) -> None:
        self.proxy.pipes.discard(self)
        if self.peer is not None and not self.proxy.partitioned:
            self.peer.transport.loseConnection()


class PartitionProxy:
    """
    A TCP proxy on 127.0.0.1 that can silently stop forwarding (a partition:
    bytes vanish, nothing is closed) and resume.
    """

    pipe: type[_Pipe] = _Pipe

    def __init__(self, targetPort: int) -> None:
        self.targetPort = targetPort
        self.partitioned = False
        self.pipes: set[_Pipe] = set()

    async def start(self) -> int:
        factory = protocol.Factory.forProtocol(lambda: self._accept())
        self.listening = await TCP4ServerEndpoint(
            reactor, 0, interface="127.0.0.1").listen(factory)
        return self.listening.getHost().port

    def _accept(self) -> _Pipe:
        inbound = self.pipe(self)
        self.pipes.add(inbound)

        def connected(outbound: _Pipe) -> None:
            self.pipes.add(outbound)
            outbound.peer, inbound.peer = inbound, outbound
            for data in inbound.buffered:
                outbound.transport.write(data)
            inbound.buffered = []

        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.targetPort)
        d = endpoint.connect(protocol.Factory.forProtocol(lambda: self.pipe(self)))
        d.addCallbacks(connected, lambda f: inbound.transport.loseConnection())
        return inbound

    async def stop(self) -> None:
        self.partitioned = False
        await self.listening.stopListening()
        closing = []
        for pipe in list(self.pipes):
            d: defer.Deferred = defer.Deferred()
            original = pipe.connectionLost

            def lost(reason, original=original, d=d):
                original(reason)
                d.callback(None)

            pipe.connectionLost = lost
            pipe.transport.loseConnection()
            closing.append(d)
        await defer.gatherResults(closing)


class _Recording(_Pipe):
    def dataReceived(self, data: bytes) -> None:
        self.proxy.captured += data
        super().dataReceived(data)


class RecordingProxy(PartitionProxy):
    """A TCP proxy on 127.0.0.1 that keeps every byte, both ways, in C{captured}."""

    pipe = _Recording

    def __init__(self, targetPort: int) -> None:
        super().__init__(targetPort)
        self.captured = bytearray()


BIN = os.path.dirname(sys.executable)


class TwistdProcess(protocol.ProcessProtocol):
    """
    C{twistd -n registry ...} as a user runs it, logging JSON to stdout;
    C{ready} fires with the first port it serves on, C{ended} with the reason
    it ended.  Events are parsed as they arrive.
    """

    def __init__(self) -> None:
        self.ready: defer.Deferred = defer.Deferred()
        self.ended: defer.Deferred = defer.Deferred()
        self.buffer = b""
        self.events: list[dict] = []
        self.errors = b""
        self.waiters: list[tuple[callable, defer.Deferred]] = []

    @classmethod
    def spawn(cls, *args: str, pythonpath: bool = True, cwd: str = ROOT,
              wait: bool = True) -> TwistdProcess:
        proc = cls()
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        if pythonpath:
            env["PYTHONPATH"] = ROOT
        reactor.spawnProcess(
            proc, os.path.join(BIN, "twistd"),
            [os.path.join(BIN, "twistd"), "-n", "--pidfile=",
             "--logger=aurora.tap.jsonLogger", "registry", *args],
            env=env, path=cwd,
        )
        return proc

    @classmethod
    async def start(cls, *args: str, **kw) -> TwistdProcess:
        proc = cls.spawn(*args, **kw)
        proc.port = await proc.ready.addTimeout(30, reactor)
        return proc

    def outReceived(self, data: bytes) -> None:
        import json

        self.buffer += data
        *records, self.buffer = self.buffer.split(b"\x1e")
        if self.buffer.endswith(b"\n"):
            # A whole record (RS, JSON, newline): read now, not when the next
            # one begins, which may be long after.
            records.append(self.buffer)
            self.buffer = b""
        for record in records:
            if not record.strip():
                continue
            event = json.loads(record)
            self.events.append(event)
            if not self.ready.called and event.get("port") and \
                    "aurora serving" in event.get("log_format", ""):
                self.ready.callback(event["port"])
            for match, d in list(self.waiters):
                if match(event):
                    self.waiters.remove((match, d))
                    d.callback(event)

    def errReceived(self, data: bytes) -> None:
        self.errors += data

    def waitFor(self, text: str) -> defer.Deferred:
        """The next event whose format contains C{text}."""
        d: defer.Deferred = defer.Deferred()
        self.waiters.append((lambda e: text in e.get("log_format", ""), d))
        return d.addTimeout(30, reactor)

    def formats(self) -> list[str]:
        return [e.get("log_format", "") for e in self.events]

    def processEnded(self, reason) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(
                "twistd ended before serving:\n" + self.errors.decode("utf-8", "replace")))
        self.ended.callback(reason.value)  # ProcessDone or ProcessTerminated

    async def kill(self, signal: str = "KILL") -> None:
        if not self.ended.called:
            self.transport.signalProcess(signal)
        await self.ended


async def runCommand(*argv: str, env: dict | None = None) -> tuple[bytes, bytes, int]:
    """Run a command to its end without blocking the reactor."""
    from twisted.internet import utils

    return await utils.getProcessOutputAndValue(
        argv[0], argv[1:], env=env if env is not None else os.environ.copy(), path="/")


def _name(common):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _issue(subject, key, issuer, issuerKey, *, ca=False, server=False):
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(issuer)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuerKey, hashes.SHA256())


def _write(path, key, cert):
    from cryptography.hazmat.primitives import serialization

    if key is not None:
        (path.parent / f"{path.name}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    (path.parent / f"{path.name}.pem").write_bytes(
        cert.public_bytes(serialization.Encoding.PEM))


def makeCertificate(directory) -> tuple[str, str]:
    """A throwaway self-signed certificate for localhost/127.0.0.1.

    Writes key.pem and cert.pem, and trust/ca.pem (the same certificate) for
    a client's trustRoots; returns (key path, certificate path).
    """
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    cert = _issue("localhost", key, _name("localhost"), key, ca=True, server=True)
    _write(directory / "cert", None, cert)
    _write(directory / "key", key, cert)
    (directory / "key.pem").write_bytes((directory / "key.key").read_bytes())
    trust = directory / "trust"
    trust.mkdir(exist_ok=True)
    (trust / "ca.pem").write_bytes((directory / "cert.pem").read_bytes())
    return str(directory / "key.pem"), str(directory / "cert.pem")


def makeAuthority(directory, *clients: str) -> dict[str, str]:
    """
    A throwaway CA, a server certificate for localhost it signed, and one
    client certificate per name in C{clients}.  Paths by role: "ca",
    "serverKey", "serverCert", "<name>Key", "<name>Cert"; "trust" is a
    directory holding the CA, for a client's trustRoots.
    """
    from cryptography.hazmat.primitives.asymmetric import ec

    caKey = ec.generate_private_key(ec.SECP256R1())
    ca = _issue("aurora test CA", caKey, _name("aurora test CA"), caKey, ca=True)
    paths = {}
    _write(directory / "ca", None, ca)
    paths["ca"] = str(directory / "ca.pem")
    trust = directory / "trust"
    trust.mkdir(exist_ok=True)
    (trust / "ca.pem").write_bytes((directory / "ca.pem").read_bytes())
    paths["trust"] = str(trust)
    for role, subject, server in [("server", "localhost", True)] + [
            (c, c, False) for c in clients]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue(subject, key, ca.subject, caKey, server=server)
        _write(directory / role, key, cert)
        paths[role + "Key"] = str(directory / f"{role}.key")
        paths[role + "Cert"] = str(directory / f"{role}.pem")
    return paths


async def fillUntilPaused(client, model, flow) -> None:
    """
    Make C{client} stop reading and change C{model} with large values until
    the server's L{aurora._flow.Flow} for it pauses (kernel buffers full).
    """
    from twisted.internet import task

    client._root._ref.broker.transport.pauseProducing()
    for i in range(400):  # bounded: at most ~100 MB offered
        model.name = "x" * 256 * 1024 + str(i)
        await task.deferLater(reactor, 0, lambda: None)  # let it write
        if flow.paused:
            return
    raise AssertionError("the kernel buffers never filled")


@contextlib.asynccontextmanager
async def slowObserver(**serverOptions: Any) -> AsyncIterator[SimpleNamespace]:
    """
    A server whose UserManager's model "alice" is observed by a client that
    has stopped reading, once the server's L{aurora._flow.Flow} for that
    client has paused (kernel buffers full).  Yields C{manager}, C{server},
    C{client}, C{users} (the client's wrapper), C{mirror}, C{model} and
    C{flow}; stops the client and the server afterwards.
    """
    from aurora import Client, Registry, Server
    from tests.app import IUserManager, UserManager

    manager = UserManager()
    registry = Registry()
    registry.register(IUserManager, manager)
    server = Server(registry, **serverOptions)
    port = (await server.listen("tcp:0:interface=127.0.0.1")).getHost().port
    client = Client(f"tcp:127.0.0.1:{port}", heartbeat=None, reconnectDelay=0.05,
                    maxReconnectDelay=0.2)
    try:
        # No local names for what the test may drop (a mirror): this frame
        # lives as long as the test's block.
        s = SimpleNamespace(manager=manager, server=server, client=client)
        s.users = await (await client.getRegistry()).getManager(IUserManager)
        s.mirror = await s.users.getModel("alice")
        s.model = manager.models["alice"]
        [serverBroker] = list(s.model._observers)
        s.flow = serverBroker.flow
        await fillUntilPaused(client, s.model, s.flow)
        yield s
    finally:
        await client.stop()
        await server.stop()
