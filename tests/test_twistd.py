"""
`twistd registry` and the `aurora` CLI, run as subprocesses exactly as a
user runs them, from the installed package (`make test` installs it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor

from aurora import Client, signals
from tests.app import IUserManager
from tests.helpers import BIN, ROOT, SignalLog, TwistdProcess, makeCertificate, runCommand
from tests.twistd_setup import IPoller

SETUP = "tests.twistd_setup:register"


def aurora(*args: str):
    return runCommand(os.path.join(BIN, "aurora"), *args)


@pytest_twisted.async_yield_fixture()
async def registryProcess():
    proc = await TwistdProcess.start(
        "--listen", "tcp:0:interface=127.0.0.1", "--setup", SETUP)
    yield proc
    await proc.kill()


@pytest_twisted.ensureDeferred
async def test_serverAndRelayDrivenByClientAndCLI(registryProcess, tmp_path):
    relay = await TwistdProcess.start(
        "--upstream", f"tcp:127.0.0.1:{registryProcess.port}",
        "--listen", "tcp:0:interface=127.0.0.1", "--heartbeat", "1",
        "--allow", "tests.app.IUserManager", "--allow", "tests.twistd_setup.IPoller",
        pythonpath=False, cwd=str(tmp_path))
    client = Client(f"tcp:127.0.0.1:{relay.port}", heartbeat=None)
    try:
        registry = await client.getRegistry()
        assert await registry.interfaces() == [
            "tests.app.IUserManager", "tests.twistd_setup.IPoller"]
        users = await registry.getManager(IUserManager)
        assert (await users.getUser("alice")).email == "alice@example.org"
        assert await (await registry.getManager(IPoller)).polls() > 0

        endpoint = f"tcp:127.0.0.1:{relay.port}"
        out, err, code = await aurora("ls", endpoint)
        assert code == 0, err
        listing = out.decode()
        assert "tests.app.IUserManager\n" in listing
        assert "  getUser(name)  The User called name." in listing
        assert "tests.app.IAdmin" not in listing  # not allowed by the relay

        out, err, code = await aurora("call", endpoint, "tests.app.IUserManager",
                                      "getModels", '["alice", "bob"]')
        assert code == 0, err
        assert json.loads(out) == {
            "alice": {"$type": "tests.app.UserModel", "name": "alice", "online": False},
            "bob": {"$type": "tests.app.UserModel", "name": "bob", "online": False}}

        out, err, code = await aurora("call", endpoint, "tests.app.IAdmin", "ping")
        assert (code, err.decode().count("\n")) == (4, 1)
        assert "UnknownInterface" in err.decode() and "tests.app.IAdmin" in err.decode()
        out, err, code = await aurora("call", endpoint, "tests.app.IUserManager",
                                      "getUser", "alice")
        assert code == 2 and "is not JSON" in err.decode()
        out, err, code = await aurora("call", endpoint, "tests.app.IUserManager",
                                      "getUser")
        assert code == 5 and "BadArguments" in err.decode()
        out, err, code = await aurora("call", endpoint, "tests.app.IUserManager",
                                      "fail", '"app"')
        assert code == 6 and "NotAllowed: alice may not" in err.decode()
        # Refused: said when the refusal comes, not at the deadline (which
        # would say "no connection ... within 600 s").
        out, err, code = await aurora("--timeout", "600", "ls", "tcp:127.0.0.1:1")
        assert code == 3 and "refused" in err.decode()
        assert "cannot connect to tcp:127.0.0.1:1" in err.decode()
        assert "within" not in err.decode()
        assert b"Traceback" not in err
    finally:
        await client.stop()
        await relay.kill()


class LineReader(protocol.ProcessProtocol):
    def __init__(self):
        self.lines, self.buffer = [], b""
        self.waiting: list[defer.Deferred] = []
        self.ended = defer.Deferred()
        self.errors = b""

    def outReceived(self, data):
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            self.lines.append(json.loads(line))
            waiting, self.waiting = self.waiting, []
            for d in waiting:
                d.callback(self.lines[-1])

    def errReceived(self, data):
        self.errors += data

    def next(self):
        d = defer.Deferred()
        self.waiting.append(d)
        return d.addTimeout(30, reactor)

    def processEnded(self, reason):
        self.ended.callback(reason.value)


@pytest_twisted.ensureDeferred
async def test_watchKeepsWatchingAcrossReconnects(registryProcess):
    watcher = LineReader()
    first = watcher.next()
    reactor.spawnProcess(watcher, os.path.join(BIN, "aurora"), [
        "aurora", "watch", f"tcp:127.0.0.1:{registryProcess.port}",
        "tests.app.IUserManager", "getModel", '"alice"'], env=os.environ.copy())
    client = Client(f"tcp:127.0.0.1:{registryProcess.port}", heartbeat=None,
                    reconnectDelay=0.05, maxReconnectDelay=0.2)
    server = registryProcess
    try:
        assert await first == {"$type": "tests.app.UserModel", "name": "alice",
                               "online": False}
        users = await (await client.getRegistry()).getManager(IUserManager)
        change = watcher.next()
        await users.setOnline("alice", True)
        assert await change == {"name": "online", "value": True, "old": False}
        # Restarted, the server has alice offline again: the watcher resyncs.
        change = watcher.next()
        await server.kill()
        server = await TwistdProcess.start(
            "--listen", f"tcp:{server.port}:interface=127.0.0.1", "--setup", SETUP)
        assert await change == {"name": "online", "value": False, "old": True}
        watcher.transport.signalProcess("INT")
        await watcher.ended
        assert b"Traceback" not in watcher.errors
    finally:
        await client.stop()
        if not watcher.ended.called:
            os.killpg(watcher.transport.pid, signal.SIGKILL)
            await watcher.ended
        await server.kill()


def readmeCommands(heading: str) -> list[str]:
    """The commands of the first sh block after C{heading} in the README, one per entry."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    block = text.split(heading, 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    commands = []
    for line in block.replace("\\\n", " ").splitlines():
        line = re.sub(r"\s+#.*$", "", line.strip())  # a comment after two spaces
        if line and not line.startswith("#"):
            commands.append(re.sub(r"\s+", " ", line))
    return commands


def test_readmeTwistdRecipesRunSideBySide():
    """
    Every twistd recipe in the README runs from one directory beside the
    others: no pidfile, and a port of its own (an upstream elsewhere is a
    recipe to adapt, not to run here).
    """
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        blocks = re.findall(r"```sh\n(.*?)```", f.read(), re.S)
    ports: dict[str, str] = {}
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            if not line.startswith("twistd -n"):
                continue
            assert "--pidfile= " in line, line
            upstream = re.search(r"--upstream (\S+)", line)
            if upstream and "127.0.0.1" not in upstream.group(1):
                continue
            for port in re.findall(r"--listen \w+:(\d+)", line):
                assert port not in ports, (line, ports[port])
                ports[port] = line
    assert len(ports) >= 3  # the server, the relay and the TLS server


@pytest_twisted.ensureDeferred
async def test_tlsRecipe(tmp_path):
    """The README's TLS recipe, line by line, in a directory like examples/."""
    if shutil.which("openssl") is None:
        pytest.skip("the recipe makes its certificate with openssl")
    shutil.copy(os.path.join(ROOT, "examples", "users.py"), tmp_path)
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    env.pop("PYTHONPATH", None)

    async def sh(command: str) -> tuple[bytes, bytes, int]:
        return await runCommand("/bin/sh", "-c", f"cd {tmp_path} && {command}", env=env)

    openssl, serve, trust, ls, untrusted = readmeCommands("### TLS, end to end")
    out, err, code = await sh(openssl)
    assert code == 0, err
    args = serve.split()
    assert args[:4] == ["twistd", "-n", "--pidfile=", "registry"]
    server = await TwistdProcess.start(
        *[a.replace(":8791:", ":0:") for a in args[4:]], pythonpath=False,
        cwd=str(tmp_path))
    recipePort = lambda command: command.replace(":8791", f":{server.port}")
    trusted = None
    try:
        out, err, code = await sh(trust)
        assert code == 0, err
        trusted = Client(f"tls:localhost:{server.port}:trustRoots={tmp_path / 'trust'}",
                         heartbeat=None)
        out, err, code = await sh(recipePort(ls))
        assert code == 0 and "users.IUserManager" in out.decode(), err
        out, err, code = await sh(recipePort(untrusted))
        assert code == 3 and b"certificate" in err, err
        assert await (await trusted.getRegistry()).interfaces() == ["users.IUserManager"]
        peer = trusted._root._ref.broker.transport.getPeerCertificate()
        assert peer.to_cryptography().subject.rfc4514_string() == "CN=localhost"
    finally:
        if trusted is not None:
            await trusted.stop()
        await server.kill()


@pytest_twisted.ensureDeferred
async def test_help():
    out, err, code = await runCommand(os.path.join(BIN, "twistd"), "registry", "--help")
    text = out.decode()
    assert code == 0
    for option in ("--listen", "--setup", "--upstream", "--allow", "--heartbeat",
                   "--config", "Examples", "twistd -n --pidfile= registry --upstream",
                   "referenceLimit=100000 \\\n"):
        assert option in text


@pytest.mark.parametrize("args, words", [
    (["--listen", "bogus:1"], "bad --listen endpoint 'bogus:1'"),
    (["--upstream", "nonsense:x"], "bad --upstream endpoint"),
    (["--listen", "tcp:8797:interfac=127.0.0.1"],
     "it has no option 'interfac'; a server endpoint looks like tcp:8789:"),
    (["--listen", "8797"], "; a server endpoint looks like tcp:8789:"),
    (["--upstream", "127.0.0.1:8795"], "; a client endpoint looks like tcp:HOST:8789"),
    (["--listen", f"ssl:0:privateKey={os.path.join(ROOT, 'README.md')}"],
     "cannot read its key or certificate"),
    (["--setup", "no_such_module_here:f"], "cannot import no_such_module_here"),
    (["--setup", "tests.twistd_setup:missing"], "has no callable 'missing'"),
    (["--setup", "tests.twistd_setup"], "must be MODULE:CALLABLE"),
    (["--allow", "tests.app.IAdmin"], "needs --upstream"),
    (["--config", "/nonexistent/registry.toml"], "cannot read --config"),
    (["--passwd", "/nonexistent/passwd"], "--passwd /nonexistent/passwd"),
    (["--upstream", "tcp:127.0.0.1:1", "--upstream-user", "x"],
     "needs --upstream-password-file"),
    (["--setup", "tests.twistd_setup:broken"],
     "--setup tests.twistd_setup:broken failed: ValueError: the database is not there"),
    (["--setup", "tests.twistd_setup:brokenLater"], "RuntimeError: late failure"),
    (["--limit", "maxBogus=3"], "--limit: unknown limit 'maxBogus'"),
    (["--limit", "maxPendingCalls=lots"], "maxPendingCalls must be a whole number"),
    (["--grant", "relay:idleTimeout=5"], "--grant: unknown limit 'idleTimeout'"),
    (["--grant", "referenceLimit=5"], "must be IDENTITY:NAME=VALUE"),
    # A grant applies to a user who logs in: without --passwd there is none.
    (["--grant", "relay-eu:referenceLimit=5000"],
     "--grant for relay-eu needs --passwd"),
    (["--heartbeat", "x", "--upstream", "tcp:127.0.0.1:1"],
     "--heartbeat must be a number, not 'x'"),
    (["--heartbeat=-1", "--upstream", "tcp:127.0.0.1:1"],
     "--heartbeat must be more than 0, not -1"),
    (["--heartbeat=1e-300", "--upstream", "tcp:127.0.0.1:1"],
     "--heartbeat must be at least 0.01 (seconds), not 1e-300"),
    (["--limit", "maxLag=1e-300"], "maxLag must be at least 0.01 (seconds)"),
    (["--max-connections", "many"], "--max-connections must be a whole number"),
    (["--login-timeout", "0"], "--login-timeout must be more than 0"),
])
@pytest_twisted.ensureDeferred
async def test_badOptionsStopWithOneLine(args, words):
    out, err, code = await runCommand(
        os.path.join(BIN, "twistd"), "-n", "--pidfile=", "registry",
        "--listen", "tcp:0:interface=127.0.0.1", *args,
        env=dict(os.environ, PYTHONPATH=ROOT))
    assert code != 0
    assert words in err.decode()
    assert b"Traceback" not in err
    assert err.decode().count("\n") == 1, err  # not the whole usage text


@pytest_twisted.ensureDeferred
async def test_configFileAndCommandLineWins(tmp_path):
    config = tmp_path / "registry.toml"
    config.write_text(
        'listen = ["tcp:0:interface=127.0.0.1"]\n'
        'setup = ["tests.twistd_setup:registerLater"]\n')
    server = await TwistdProcess.start("--config", str(config))
    other = await TwistdProcess.start("--config", str(config), "--setup", SETUP)
    clients = [Client(f"tcp:127.0.0.1:{p.port}", heartbeat=None) for p in (server, other)]
    try:
        assert await (await clients[0].getRegistry()).interfaces() == ["tests.app.IAdmin"]
        assert "tests.twistd_setup.IPoller" in await (
            await clients[1].getRegistry()).interfaces()
    finally:
        for c in clients:
            await c.stop()
        await server.kill()
        await other.kill()


@pytest_twisted.ensureDeferred
async def test_sigtermStopsCleanly(registryProcess):
    formats = registryProcess.formats()
    assert formats.index("poller started") < next(
        i for i, f in enumerate(formats) if f.startswith("aurora serving"))
    client = Client(f"tcp:127.0.0.1:{registryProcess.port}", heartbeat=None,
                    reconnectDelay=5)
    lost = SignalLog(signals.disconnected, client)
    try:
        await client.getRegistry()
        down = lost.next()
        registryProcess.transport.signalProcess("TERM")
        await down
        ended = await registryProcess.ended
        assert ended.signal == 15  # twistd re-raises SIGTERM when done
        # The server closed the connection itself, as it stopped (its log
        # says so before its managers stop), not the exit of its process.
        formats = registryProcess.formats()
        closed = next(i for i, f in enumerate(formats) if "disconnected" in f)
        assert closed < formats.index("stopping manager {manager!r}")
        assert formats.index("stopping manager {manager!r}") < formats.index(
            "poller stopped")
        assert formats.count("registry stopped") == 1  # its last line
    finally:
        lost.close()
        await client.stop()


@pytest_twisted.ensureDeferred
async def test_loginOptionsAndARelayThatLogsInUpstream(tmp_path):
    from aurora import auth

    key, cert = makeCertificate(tmp_path)
    passwd = tmp_path / "passwd"
    out, err, code = await runCommand(
        "/bin/sh", "-c",
        f"echo s3cret | {os.path.join(BIN, 'aurora')} passwd {passwd} relay "
        "--interfaces tests.app.IUserManager")
    assert code == 0, err
    secret = tmp_path / "relay.secret"
    secret.write_text("s3cret\n")
    origin = await TwistdProcess.start(
        "--listen", f"ssl:0:privateKey={key}:certKey={cert}:interface=127.0.0.1",
        "--passwd", str(passwd), "--setup", SETUP)
    relay = await TwistdProcess.start(
        "--upstream", f"tls:localhost:{origin.port}:trustRoots={tmp_path / 'trust'}",
        "--upstream-user", "relay", "--upstream-password-file", str(secret),
        "--listen", "tcp:0:interface=127.0.0.1",
        pythonpath=False, cwd=str(tmp_path))
    client = Client(f"tcp:127.0.0.1:{relay.port}", heartbeat=None)
    try:
        registry = await client.getRegistry()
        # What the relay's login may use, and nothing else, is re-published.
        assert await registry.interfaces() == ["tests.app.IUserManager"]
        users = await registry.getManager(IUserManager)
        assert await users.echo("through a logged-in relay") == "through a logged-in relay"
        out, err, code = await aurora("--user", "relay", "--password-file", str(secret),
                                      "ls", f"tls:localhost:{origin.port}:trustRoots="
                                      f"{tmp_path / 'trust'}")
        assert code == 0 and "tests.app.IUserManager" in out.decode(), err
        out, err, code = await aurora("ls", f"tls:localhost:{origin.port}:trustRoots="
                                      f"{tmp_path / 'trust'}")
        assert code == 3 and "anonymous" in err.decode()
        assert auth.readPasswordFile(str(passwd))["relay"].interfaces == {
            "tests.app.IUserManager"}
    finally:
        await client.stop()
        await relay.kill()
        await origin.kill()


def test_limitsAndGrantsReachTheServer(tmp_path):
    """--limit and --grant (and their TOML tables) become Server's arguments."""
    from aurora import auth, tap

    config = tmp_path / "registry.toml"
    config.write_text('[limits]\nmaxPendingCalls = 7\nidleTimeout = 30\n'
                      '[grants.relay-eu]\nreferenceLimit = 5000\n')
    auth.setPassword(str(tmp_path / "passwd"), "relay-eu", "s3cret")
    options = tap.Options()
    options.parseOptions([
        "--listen", "tcp:0:interface=127.0.0.1", "--config", str(config),
        "--passwd", str(tmp_path / "passwd"),
        "--limit", "maxPendingCalls=9", "--grant", "anonymous:maxPendingCalls=50"])
    server = tap.makeService(options).server
    assert server.factory.loggedInLimits.maxPendingCalls == 9  # the command line wins
    assert server._idleTimeout == 30.0
    assert server._grants == {"relay-eu": {"referenceLimit": 5000},
                              None: {"maxPendingCalls": 50}}


@pytest.mark.parametrize("endpoint", ["localhost:8789", "tcp:127.0.0.1", "http://x/"])
@pytest_twisted.ensureDeferred
async def test_cliBadEndpointIsOneLineAndUsage(endpoint):
    out, err, code = await aurora("ls", endpoint)
    assert code == 2, (code, err)
    assert err.decode().count("\n") == 1 and "bad endpoint" in err.decode()
    assert b"Traceback" not in err


@pytest_twisted.ensureDeferred
async def test_cliIntoAClosedPipeIsQuiet(registryProcess):
    """`aurora ls ... | head -1`: no BrokenPipeError, the shell's status for it."""
    out, err, code = await runCommand(
        "/bin/sh", "-c", f"{os.path.join(BIN, 'aurora')} ls "
        f"tcp:127.0.0.1:{registryProcess.port} | head -c 1; "
        "echo \" ${PIPESTATUS:-}\" >&2", env=os.environ.copy())
    assert b"BrokenPipe" not in err and b"Traceback" not in err, err


@pytest.mark.parametrize("signal_, status", [("INT", 130), ("TERM", 143)])
@pytest_twisted.ensureDeferred
async def test_cliWatchInterruptedIsNotSuccess(registryProcess, signal_, status):
    """Interrupted `watch`: 130 or 143, and no 'connection lost' line."""
    watcher = LineReader()
    first = watcher.next()
    reactor.spawnProcess(watcher, os.path.join(BIN, "aurora"), [
        "aurora", "watch", f"tcp:127.0.0.1:{registryProcess.port}",
        "tests.app.IUserManager", "getModel", '"alice"'], env=os.environ.copy())
    try:
        assert await first == {"$type": "tests.app.UserModel", "name": "alice",
                               "online": False}
        watcher.transport.signalProcess(signal_)
        reason = await watcher.ended
        assert reason.exitCode == status, (reason, watcher.errors)
        assert b"connection lost" not in watcher.errors
        assert b"Traceback" not in watcher.errors
    finally:
        if not watcher.ended.called:
            watcher.transport.signalProcess("KILL")
            await watcher.ended


@pytest_twisted.ensureDeferred
async def test_cliWatchIntoAClosedPipeEnds(registryProcess):
    """`aurora watch ... | head -1` ends at the next change, quietly."""
    watcher = LineReader()
    first = watcher.next()
    # In a session of its own, so that a failure kills the whole pipeline.
    reactor.spawnProcess(watcher, "/usr/bin/setsid", [
        "setsid", "sh", "-c", f"{os.path.join(BIN, 'aurora')} watch "
        f"tcp:127.0.0.1:{registryProcess.port} tests.app.IUserManager getModel "
        "'\"alice\"' | head -1"], env=os.environ.copy())
    client = Client(f"tcp:127.0.0.1:{registryProcess.port}", heartbeat=None)
    try:
        assert await first == {"$type": "tests.app.UserModel", "name": "alice",
                               "online": False}
        users = await (await client.getRegistry()).getManager(IUserManager)
        await users.setOnline("alice", True)  # written into the closed pipe
        await watcher.ended  # (it would wait here forever: the test's timeout)
        assert b"Traceback" not in watcher.errors
        assert b"BrokenPipe" not in watcher.errors
    finally:
        await client.stop()
        if not watcher.ended.called:
            os.killpg(watcher.transport.pid, signal.SIGKILL)
            await watcher.ended
