"""
The `aurora` command line.  Its argument, JSON and exit-status logic is
driven in process (`aurora.cli.run` against a `Server` on 127.0.0.1); a few
tests run the installed command as a user does, where only a real process
shows it (what reaches stderr, `python -m aurora`, the example application).
"""

from __future__ import annotations

import datetime
import decimal
import io
import json
import os
import sys

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from aurora import Registry, Server, auth
from aurora.cli import (
    EXIT_ARGUMENTS,
    EXIT_CONNECTION,
    EXIT_NOT_A_MODEL,
    EXIT_OK,
    EXIT_REMOTE,
    EXIT_UNKNOWN,
    EXIT_USAGE,
    MAX_JSON_VALUES,
    JSONFormError,
    TooLargeForJSON,
    fromJSON,
    plainText,
    run,
    toJSON,
)
from aurora.remoteable import OpaqueCopy
from tests.app import IAdmin, IUserManager, NotAllowed, User, UserManager, UserModel
from tests.helpers import BIN, ROOT, TwistdProcess, makeCertificate, runCommand

# What a server advertises (Registry.types()), as the CLI gets it.
TYPES = {
    "tests.app.User": {"kind": "copy", "fields": ["name", "email"], "keyField": None},
    "tests.app.UserModel": {"kind": "model", "fields": ["name", "online"],
                            "keyField": "name"},
    "tests.app.NotAllowed": {"kind": "error", "fields": ["message", "who"],
                             "keyField": None},
}


# -- the JSON forms, both ways ------------------------------------------------

@pytest.mark.parametrize("value, form", [
    ("text", "text"),
    ([1, 2.5, None, True, "x"], [1, 2.5, None, True, "x"]),
    (b"hi", {"$bytes": "aGk="}),  # bytes are bytes even when they are UTF-8
    (b"\xff\x00", {"$bytes": "/wA="}),
    ({"$type": "a key"}, {"$$type": "a key"}),
    ({"$$k": 1, "$": 2, "k$": 3}, {"$$$k": 1, "$$": 2, "k$": 3}),
    ({"nested": [{"$bytes": b"x"}]}, {"nested": [{"$$bytes": {"$bytes": "eA=="}}]}),
    (User(name="carol", email=b"c"),
     {"$type": "tests.app.User", "name": "carol", "email": {"$bytes": "Yw=="}}),
    ([User(name="a")], [{"$type": "tests.app.User", "name": "a", "email": None}]),
])
def test_jsonFormsRoundTrip(value, form):
    """What `call` prints is what it reads: the same value comes back."""
    assert toJSON(value) == form
    again = fromJSON(json.loads(json.dumps(form)), TYPES)
    assert again == value
    assert type(again) is (list if isinstance(value, list) else
                           OpaqueCopy if isinstance(value, User) else type(value))


def test_modelsErrorsAndManagersPrintWithWhatTheyAre():
    assert toJSON(UserModel(name="alice", online=True)) == {
        "$type": "tests.app.UserModel", "name": "alice", "online": True}
    assert toJSON(NotAllowed("no", who="bob")) == {
        "$type": "tests.app.NotAllowed", "message": "no", "who": "bob"}


def test_whatJSONHasNoFormForPrintsAsItsNearestJSON():
    """Printed only: these do not come back as themselves."""
    assert toJSON((1, (2,))) == [1, [2]]
    assert toJSON(frozenset({"a"})) == ["a"]
    assert toJSON({1: "one"}) == {"1": "one"}
    assert toJSON([datetime.date(2026, 12, 2), datetime.time(7, 35),
                   datetime.datetime(2026, 12, 2, 7, 35), datetime.timedelta(hours=1),
                   decimal.Decimal("1.10")]) == [
        "2026-12-02", "07:35:00", "2026-12-02T07:35:00", "1:00:00", "1.10"]


def test_aCopyFromJSONIsAnOpaqueCopyOfTheAdvertisedType():
    copy = fromJSON({"$type": "tests.app.User", "name": "carol"}, TYPES)
    assert isinstance(copy, OpaqueCopy)
    assert copy.typeName == "tests.app.User"
    assert copy._state() == {"name": "carol", "email": None}  # left out: None


@pytest.mark.parametrize("form, words", [
    ({"$type": "tests.app.Usr", "name": "x"},
     ["'tests.app.Usr' is not a type the server offers", "copy types: tests.app.User"]),
    ({"$type": "tests.app.UserModel"}, ["is a model type, not a copy", "tests.app.User"]),
    ({"$type": "tests.app.NotAllowed"}, ["is an error type, not a copy"]),
    ({"$type": 7}, ["7 is not a type"]),
    ({"$type": "tests.app.User", "nmae": "x"},
     ["tests.app.User has no field 'nmae'", "name, email"]),
    ({"$type": "tests.app.User", "$bytes": "aGk="}, ["'$bytes'", "each alone"]),
    ({"$bytes": "not base64!"}, ["not base64"]),
    ({"$bytes": 5}, ["base64 string"]),
    ({"$bytes": "aGk=", "more": 1}, ["holds nothing else"]),
    ({"$key": 1}, ["'$key' is not a key aurora reads", "'$$key'"]),
    ({"$manager": ["tests.app.IAdmin"]}, ["'$manager'"]),
    ([1, {"deep": {"$nope": 1}}], ["'$nope'"]),
])
def test_jsonFormsThatStandForNothing(form, words):
    with pytest.raises(JSONFormError) as e:
        fromJSON(form, TYPES)
    for w in words:
        assert w in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("doc, plain", [
    ("The User called C{name}.", "The User called name."),
    ("See L{the registry <aurora.Registry>}, L{Client} and C{L{x}}.",
     "See the registry, Client and x."),
    ("I{Very} B{bold} U{home <https://example.org>} E{lb}x E{rb}",
     "Very bold home {x }"),
    ("Do it.\n\n@param name: who, a C{str}\n@return: a L{User}\n"
     "@raise KeyError: if not found\n@rtype: User",
     "Do it.\n\nname: who, a str\nreturns: a User\n"
     "raises KeyError: if not found\nreturn type: User"),
    ("email@example.org and {braces} and lowercase c{x} stay", None),
])
def test_plainTextStripsEpytext(doc, plain):
    assert plainText(doc) == (doc if plain is None else plain)


# -- in process, against a Server on 127.0.0.1 -------------------------------

class App:
    """A Server publishing the test application; `cli()` runs a command at it."""

    def __init__(self, portal=None, **serverOptions) -> None:
        # The server's clock never advances: slowEcho never answers.
        self.manager = UserManager(clock=task.Clock())
        registry = Registry()
        registry.register(IUserManager, self.manager)
        registry.register(IAdmin, self.manager.admin)
        self.server = Server(registry, portal, **serverOptions)

    async def start(self, endpoint: str = "tcp:0:interface=127.0.0.1") -> App:
        self.port = (await self.server.listen(endpoint)).getHost().port
        self.endpoint = f"tcp:127.0.0.1:{self.port}"
        return self

    async def cli(self, *argv: str, out=None) -> tuple[int, str, str]:
        out = io.StringIO() if out is None else out
        err = io.StringIO()
        status = await run(reactor, list(argv), out=out, err=err)
        return status, out.getvalue(), err.getvalue()


@pytest_twisted.async_yield_fixture()
async def app():
    served = await App().start()
    yield served
    await served.server.stop()


def oneLine(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("aurora: "), err
    return err


@pytest_twisted.ensureDeferred
async def test_callSendsACopyNamedByItsType(app):
    """addUser gets a User of its own class, from a CLI with no application code."""
    status, out, err = await app.cli(
        "call", app.endpoint, "tests.app.IUserManager", "addUser",
        '{"$type": "tests.app.User", "name": "carol", "email": "carol@example.org"}')
    assert (status, err) == (EXIT_OK, "")
    assert json.loads(out) == "User"  # the class the server's method saw
    assert app.manager.users["carol"] == User(name="carol", email="carol@example.org")
    status, out, err = await app.cli("call", app.endpoint, "tests.app.IUserManager",
                                     "getUser", '"carol"')
    assert json.loads(out) == {"$type": "tests.app.User", "name": "carol",
                               "email": "carol@example.org"}


@pytest_twisted.ensureDeferred
async def test_valuesReachTheServerAsThemselvesAndComeBackInTheirForm(app):
    email = {"$$type": [{"$bytes": "AAEC"}, {"$type": "tests.app.User", "name": "x",
                                             "email": None}],
             "$$$deep": {"k": [1, 2.5, None, True]}}
    form = {"$type": "tests.app.User", "name": "dave", "email": email}
    status, out, err = await app.cli("call", app.endpoint, "tests.app.IUserManager",
                                     "addUser", json.dumps(form))
    assert (status, err) == (EXIT_OK, "")
    assert app.manager.users["dave"].email == {
        "$type": [b"\x00\x01\x02", User(name="x")], "$$deep": {"k": [1, 2.5, None, True]}}
    status, out, err = await app.cli("call", app.endpoint, "tests.app.IUserManager",
                                     "getUser", '"dave"')
    assert json.loads(out) == form


@pytest_twisted.ensureDeferred
async def test_managersModelsAndRaisedErrorsPrintWithWhatTheyAre(app):
    status, out, err = await app.cli("call", app.endpoint, "tests.app.IUserManager",
                                     "getAdmin")
    assert json.loads(out) == {"$manager": ["tests.app.IAdmin"]}
    status, out, err = await app.cli("call", app.endpoint, "tests.app.IUserManager",
                                     "getModels", '["alice"]')
    assert json.loads(out) == {"alice": {"$type": "tests.app.UserModel",
                                         "name": "alice", "online": False}}
    # What the method raised: one line on stderr, its JSON on stdout.
    status, out, err = await app.cli("call", app.endpoint, "tests.app.IUserManager",
                                     "fail", '"app"')
    assert status == EXIT_REMOTE
    assert oneLine(err) == "aurora: NotAllowed: alice may not\n"
    assert json.loads(out) == {"$type": "tests.app.NotAllowed",
                               "message": "alice may not", "who": "alice"}


@pytest_twisted.ensureDeferred
async def test_anUnknownTypeIsUsageAndListsTheServersCopyTypes(app):
    status, out, err = await app.cli(
        "call", app.endpoint, "tests.app.IUserManager", "addUser",
        '{"$type": "tests.app.Usr", "name": "carol"}')
    assert (status, out) == (EXIT_USAGE, "")
    assert "$type 'tests.app.Usr' is not a type the server offers" in oneLine(err)
    assert "tests.app.User" in err and "aurora.remoteable" not in err
    assert "carol" not in app.manager.users  # nothing was called


@pytest_twisted.ensureDeferred
async def test_badJSONAndBadArgumentsHaveTheirStatuses(app):
    status, out, err = await app.cli("call", app.endpoint, "tests.app.IUserManager",
                                     "getUser", "alice")
    assert status == EXIT_USAGE and "is not JSON" in oneLine(err)
    assert """(a string is JSON in quotes: '"alice"')""" in err
    status, out, err = await app.cli("call", app.endpoint, "tests.app.IUserManager",
                                     "getUser")
    assert status == EXIT_ARGUMENTS and "BadArguments" in oneLine(err)
    status, out, err = await app.cli("call", app.endpoint, "tests.app.IUserManager",
                                     "getUsr", '"alice"')
    assert status == EXIT_UNKNOWN and "getUser" in oneLine(err)  # did you mean


@pytest_twisted.ensureDeferred
async def test_unknownInterfaceListsWhatIsOffered(app):
    status, out, err = await app.cli("call", app.endpoint, "tests.app.INope", "ping")
    assert status == EXIT_UNKNOWN
    assert "offered: tests.app.IAdmin, tests.app.IUserManager" in oneLine(err)


def test_theDefaultTimeoutIsTenSeconds():
    from aurora.cli import _parser

    assert _parser().parse_args(["ls", "tcp:127.0.0.1:8789"]).timeout == 10.0


@pytest_twisted.ensureDeferred
async def test_aCallWithNoAnswerInTimeIsNoConnection(app):
    status, out, err = await app.cli("--timeout", "1.5", "call", app.endpoint,
                                     "tests.app.IUserManager", "slowEcho", "1", "5")
    assert status == EXIT_CONNECTION and "Timeout" in oneLine(err)
    assert out == ""


@pytest_twisted.ensureDeferred
async def test_watchOfWhatIsNotAModelHasItsOwnStatus(app):
    status, out, err = await app.cli("watch", app.endpoint, "tests.app.IUserManager",
                                     "getUser", '"alice"')
    assert (status, out) == (EXIT_NOT_A_MODEL, "")
    assert "getUser returned a tests.app.User, not a model" in oneLine(err)
    status, out, err = await app.cli("watch", app.endpoint, "tests.app.IUserManager",
                                     "echo", "1")
    assert "echo returned an int, not a model" in oneLine(err)


class Lines(io.StringIO):
    """
    An `out` that says when a line is written: on the reactor's next turn,
    not from inside the CLI's own write (where a cancel, as Ctrl-C would
    send, would find the CLI not waiting on anything).
    """

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[defer.Deferred] = []

    def write(self, text: str) -> int:
        n = super().write(text)
        waiting, self.waiting = self.waiting, []
        line = json.loads(self.getvalue().splitlines()[-1])
        for d in waiting:
            reactor.callLater(0, d.callback, line)
        return n

    def next(self) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.waiting.append(d)
        return d.addTimeout(30, reactor)


@pytest_twisted.ensureDeferred
async def test_watchPrintsTheModelWithItsTypeThenEachChange(app):
    out = Lines()
    first = out.next()
    watching = defer.ensureDeferred(app.cli(
        "watch", app.endpoint, "tests.app.IUserManager", "getModel", '"alice"', out=out))
    try:
        assert await first == {"$type": "tests.app.UserModel", "name": "alice",
                               "online": False}
        change = out.next()
        app.manager.setOnline("alice", True)
        assert await change == {"name": "online", "value": True, "old": False}
    finally:
        watching.cancel()  # what main() does on SIGINT
        status, _, err = await watching
    assert (status, err) == (EXIT_OK, "")


@pytest_twisted.ensureDeferred
async def test_lsPrintsDocsAsPlainText(app):
    status, out, err = await app.cli("ls", app.endpoint)
    assert status == EXIT_OK
    assert "  getUser(name)  The User called name.\n" in out
    assert "  slowEcho(value, delay)  value, after delay seconds.\n" in out
    assert "{" not in out


@pytest_twisted.ensureDeferred
async def test_loginRefusalsNameTheCommandsOwnFlags(tmp_path):
    passwd = tmp_path / "passwd"
    auth.setPassword(str(passwd), "alice", "secret")
    (tmp_path / "right").write_text("secret\n")
    (tmp_path / "wrong").write_text("guess\n")
    app = await App(auth.portal(str(passwd)), allowInsecureLogin=True,
                    loginDelay=0).start()
    try:
        status, out, err = await app.cli("ls", app.endpoint)
        assert status == EXIT_CONNECTION
        assert "does not allow anonymous access" in oneLine(err)
        assert "--user NAME" in err and "--password-file FILE" in err
        # The client's own refusal to send a password over plain TCP.
        status, out, err = await app.cli("--user", "alice", "--password-file",
                                         str(tmp_path / "right"), "ls", app.endpoint)
        assert status == EXIT_CONNECTION
        assert "the connection is not TLS" in oneLine(err)
        assert "--allow-insecure-login" in err and "allowInsecureLogin" not in err
        status, out, err = await app.cli("--user", "alice", "--password-file",
                                         str(tmp_path / "wrong"),
                                         "--allow-insecure-login", "ls", app.endpoint)
        assert status == EXIT_CONNECTION
        assert "login refused for user 'alice'" in oneLine(err)
        assert "check --user alice and the password" in err
        status, out, err = await app.cli("--user", "alice", "--password-file",
                                         str(tmp_path / "right"),
                                         "--allow-insecure-login", "ls", app.endpoint)
        assert (status, err) == (EXIT_OK, "") and "tests.app.IUserManager" in out
        status, out, err = await app.cli("--user", "alice", "--password-file",
                                         str(tmp_path / "missing"), "ls", app.endpoint)
        assert status == EXIT_USAGE
        assert f"cannot read --password-file '{tmp_path / 'missing'}'" in oneLine(err)
    finally:
        await app.server.stop()


@pytest_twisted.ensureDeferred
async def test_anUntrustedCertificateIsReportedAtOnce(tmp_path):
    key, cert = makeCertificate(tmp_path)
    app = await App().start(f"ssl:0:privateKey={key}:certKey={cert}:interface=127.0.0.1")
    try:
        # At once, not after the timeout (600 s: waiting for it would run
        # into this test's own limit).
        status, out, err = await app.cli("--timeout", "600", "ls",
                                         f"tls:localhost:{app.port}")
        assert status == EXIT_CONNECTION
        assert "the server's certificate is not trusted" in oneLine(err)
        missing = tmp_path / "no-such-dir"
        status, out, err = await app.cli(
            "ls", f"tls:localhost:{app.port}:trustRoots={missing}")
        assert status == EXIT_USAGE
        assert f"No such file or directory: '{missing}'" in oneLine(err)
        status, out, err = await app.cli(
            "ls", f"tls:localhost:{app.port}:trustRoots={tmp_path / 'trust'}")
        assert (status, err) == (EXIT_OK, "")
    finally:
        await app.server.stop()


# -- the installed command, in processes of its own ---------------------------

def aurora(*args: str):
    return runCommand(os.path.join(BIN, "aurora"), *args)


@pytest_twisted.ensureDeferred
async def test_addUserOfTheExampleFromTheCommandLine():
    """
    README's example application, served by twistd: `aurora call` adds a
    User given as JSON, and reads it back (`python -m aurora` likewise).
    """
    server = await TwistdProcess.start(
        "--listen", "tcp:0:interface=127.0.0.1", "--setup", "users:register",
        pythonpath=False, cwd=os.path.join(ROOT, "examples"))
    endpoint = f"tcp:127.0.0.1:{server.port}"
    carol = '{"$type": "users.User", "name": "carol", "email": "carol@example.org"}'
    try:
        out, err, code = await aurora("call", endpoint, "users.IUserManager", "addUser",
                                      carol)
        assert (code, out, err) == (0, b"null\n", b"")
        out, err, code = await runCommand(sys.executable, "-m", "aurora", "call", endpoint,
                                          "users.IUserManager", "getUser", '"carol"')
        assert code == 0, err
        assert json.loads(out) == json.loads(carol)
        # Added again: the method raises; its error as JSON, one line on stderr.
        out, err, code = await aurora("call", endpoint, "users.IUserManager", "addUser",
                                      carol)
        assert code == EXIT_REMOTE
        assert json.loads(out) == {"$type": "aurora.errors.Error",
                                   "message": "a user called 'carol' exists already"}
        assert err == b"aurora: Error: a user called 'carol' exists already\n"
        out, err, code = await aurora("call", endpoint, "users.IUserManager", "addUser",
                                      '{"$type": "User", "name": "dave"}')
        assert (code, out) == (EXIT_USAGE, b"")
        assert err.count(b"\n") == 1 and b"copy types: users.User" in err
    finally:
        await server.kill()


@pytest_twisted.ensureDeferred
async def test_startupFailuresAreOneLineEach(tmp_path):
    key, cert = makeCertificate(tmp_path)
    passwd = tmp_path / "passwd"
    auth.setPassword(str(passwd), "alice", "secret")
    secret = tmp_path / "secret"
    secret.write_text("secret\n")
    server = await TwistdProcess.start(
        "--listen", f"ssl:0:privateKey={key}:certKey={cert}:interface=127.0.0.1",
        "--passwd", str(passwd), "--setup", "tests.twistd_setup:register")
    trusted = f"tls:localhost:{server.port}:trustRoots={tmp_path / 'trust'}"
    try:
        for argv, status, words in [
                (["ls", "tcp:127.0.0.1"], EXIT_USAGE, "bad endpoint"),
                (["ls", "tcp:127.0.0.1:1"], EXIT_CONNECTION, "refused"),
                (["ls", f"tls:localhost:{server.port}"], EXIT_CONNECTION, "not trusted"),
                (["ls", trusted], EXIT_CONNECTION, "anonymous"),
                (["--user", "alice", "--password-file", str(secret), "call", trusted,
                  "tests.app.INope", "ping"], EXIT_UNKNOWN, "UnknownInterface")]:
            out, err, code = await aurora(*argv)
            assert (code, out) == (status, b""), (argv, err)
            assert err.count(b"\n") == 1 and err.startswith(b"aurora: "), (argv, err)
            assert words.encode() in err, (argv, err)
    finally:
        await server.kill()


@pytest_twisted.ensureDeferred
async def test_anEmptyPasswordAndAServerThatRefusesPlainTCPSaySo(tmp_path, monkeypatch):
    passwd = tmp_path / "passwd"
    auth.setPassword(str(passwd), "alice", "secret")
    (tmp_path / "right").write_text("secret\n")
    app = await App(auth.portal(str(passwd)), loginDelay=0).start()
    try:
        monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # piped, and empty
        status, out, err = await app.cli("--user", "alice", "ls", app.endpoint)
        assert status == EXIT_USAGE
        assert "no password for --user alice" in oneLine(err)
        # The server refuses passwords on plain TCP: its reason is the whole story.
        status, out, err = await app.cli("--user", "alice", "--password-file",
                                         str(tmp_path / "right"),
                                         "--allow-insecure-login", "ls", app.endpoint)
        assert status == EXIT_CONNECTION
        assert "needs an encrypted connection" in oneLine(err)
        assert "check --user" not in err
    finally:
        await app.server.stop()


@pytest.mark.parametrize("argv, words", [
    (["lss", "tcp:127.0.0.1:1"], "aurora: argument command: invalid choice: 'lss'"),
    ([], "aurora: the following arguments are required: command"),
    (["call", "tcp:127.0.0.1:1"],
     "aurora call: the following arguments are required: interface, method (see"),
])
@pytest_twisted.ensureDeferred
async def test_usageErrorsAreOneLine(argv, words):
    out, err, code = await aurora(*argv)
    assert (code, out) == (EXIT_USAGE, b"")
    assert err.count(b"\n") == 1 and words.encode() in err, err


def test_markupPassesAreBoundedWhateverTheNesting():
    """A server's docstring cannot make `ls` spend time quadratic in its nesting."""
    assert plainText("C{" * 3 + "x" + "}" * 3) == "x"
    assert plainText("C{" * 10 + "x" + "}" * 10) == "C{C{x}}"  # 8 levels removed
    assert plainText("\n" * 10_000 + "@param x: y") == "\n" * 10_000 + "x: y"


def test_sharedReferencesCannotExplodeTheJSON():
    """x = [x, x], forty deep: a few hundred bytes on the wire, 2**40 values written out."""
    value: list = ["leaf"]
    for _ in range(40):
        value = [value, value]
    with pytest.raises(TooLargeForJSON, match=f"more than {MAX_JSON_VALUES:,} values"):
        toJSON(value)
    assert toJSON([[1, 2]] * 3) == [[1, 2]] * 3  # shared, and small: written out


@pytest_twisted.ensureDeferred
async def test_theServersWordsReachTheTerminalAsOneSafeLine(app, monkeypatch):
    def fail(kind):
        raise NotAllowed("line one\n\x1b]0;owned\x07\x1b[2Jfake: all is well\n" * 100,
                         who="x")

    monkeypatch.setattr(app.manager, "fail", fail)
    status, out, err = await app.cli("call", app.endpoint, "tests.app.IUserManager",
                                     "fail", '"x"')
    assert status == EXIT_REMOTE
    assert "\x1b" not in oneLine(err) and "\x07" not in err and len(err) < 2100
    status, out, err = await app.cli("call", app.endpoint, "tests.app.IUserManager",
                                     "echo", "[" * 100_000)
    assert status == EXIT_USAGE and "nested too deeply" in oneLine(err)
