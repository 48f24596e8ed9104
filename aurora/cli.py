"""
The operator's command line: C{aurora} (or C{python -m aurora})::

    aurora ls ENDPOINT
    aurora call ENDPOINT DOTTED.INTERFACE METHOD [JSON-ARG ...]
    aurora watch ENDPOINT DOTTED.INTERFACE METHOD [JSON-ARG ...]
    aurora passwd FILE USER [--interfaces A,B | *] [--certificate-only]

ENDPOINT is a Twisted client endpoint string (C{tcp:127.0.0.1:8789},
C{tls:host:8790:trustRoots=/etc/aurora/ca}).  The CLI needs none of the
application's modules: interfaces arrive as descriptions, and copies, models
and errors as opaque objects of the types the server advertises.

Values are JSON, the same form in C{call}'s arguments and in what C{call}
and C{watch} print (L{toJSON}, L{fromJSON}):
C{{"$type": "myapp.User", "name": "carol"}} is a copy, model or error of
that type with its declared fields (an argument may name any copy type the
server advertises); C{{"$bytes": "aGk="}} is bytes, in base64; a key that
starts with C{$} is written with one more (C{"$$key"} is the key C{"$key"});
C{{"$manager": ["myapp.IAdmin"]}} is a manager (printed, never read).

Exit status: 0 done; 2 bad usage, or an argument that is not JSON or names
a C{$type} the server does not offer; 3 no connection (refused, timed out,
lost, an untrusted certificate, login refused) or a call with no answer in
time; 4 unknown interface or method; 5 the arguments do not fit the method; 6 the method raised an error
(printed as JSON on stdout too); 7 C{watch} of a method that returns no
model; 1 anything else; 130 and 143 interrupted (SIGINT, SIGTERM); 141 the
reader of the output went away.  Each failure is one line on stderr.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime
import decimal
import json
import os
import re
import signal
import sys
from typing import Any, Mapping, NoReturn, TextIO

from pydispatch import dispatcher
from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer, task
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import ISSLTransport, IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from aurora import _schema, auth, errors, signals
from aurora._copyable import OpaqueCopy
from aurora._model import Model
from aurora._types import Declared
from aurora._wrapper import Wrapper
from aurora.client import Client

EXIT_OK, EXIT_OTHER, EXIT_USAGE, EXIT_CONNECTION, EXIT_UNKNOWN, EXIT_ARGUMENTS, \
    EXIT_REMOTE, EXIT_NOT_A_MODEL = 0, 1, 2, 3, 4, 5, 6, 7
EXIT_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a closed pipe

_MAX_LISTED = 20  # type names an unknown $type lists, at most
_KINDS = {"model": "a model", "error": "an error"}  # what else a $type may name


class _Failed(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class JSONFormError(ValueError):
    """
    A JSON value that stands for nothing aurora can send: an unknown
    C{$type} or field, bad base64 in C{$bytes}, an unknown C{$} key.
    """


def _escape(key: str) -> str:
    # One more "$" for a real key starting with "$": "$type" is ours.
    return "$" + key if key.startswith("$") else key


def _unescape(key: str) -> str:
    return key[1:] if key.startswith("$$") else key


class TooLargeForJSON(ValueError):
    """A value whose JSON form would exceed L{MAX_JSON_VALUES} values."""


MAX_JSON_VALUES = 1_000_000
"""The most values C{toJSON} writes out: jelly's shared references let a
few hundred bytes on the wire stand for a value that, written out in full,
is exponentially large (C{x = [x, x]}, forty deep)."""


def toJSON(value: Any, *, _left: list[int] | None = None) -> Any:
    """
    The JSON form of anything that can arrive: a copy, model or error as
    C{{"$type": name, field: ...}}, bytes as C{{"$bytes": base64}}, a
    manager as C{{"$manager": [interface, ...]}}, a dict key that starts
    with C{$} with one C{$} more.  Tuples and sets become lists, dates and
    times ISO strings, a Decimal a string, a dict key that is not a string
    its C{str}: those do not come back as themselves through L{fromJSON}.

    @raise TooLargeForJSON: past L{MAX_JSON_VALUES} values.
    """
    left = [MAX_JSON_VALUES] if _left is None else _left
    left[0] -= 1
    if left[0] < 0:
        raise TooLargeForJSON(
            f"the value written out as JSON has more than {MAX_JSON_VALUES:,} values "
            "(shared parts are written out in full each time they occur): not printed")
    if isinstance(value, Declared):  # Copyable, Model, Error, opaque or not
        form = {"$type": value.typeName}
        form.update((_escape(k), toJSON(v, _left=left)) for k, v in value._state().items())
        return form
    if isinstance(value, Wrapper):
        return {"$manager": list(value._names)}
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {_escape(str(k)): toJSON(v, _left=left) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [toJSON(v, _left=left) for v in value]
    if isinstance(value, datetime.timedelta):
        return str(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return value


def fromJSON(form: Any, types: Mapping[str, Mapping[str, Any]]) -> Any:
    """
    The value the JSON form C{form} (as C{json.loads} gives it) stands for:
    L{toJSON} the other way.  C{{"$type": name, ...}} becomes an opaque copy
    of that type (L{OpaqueCopy}: the server receives its own class), with
    the fields given and None for the others.

    @param types: the types the server advertises, name to C{kind} and
        C{fields} (L{aurora.remote.Registry.types}); C{$type} may name any
        of kind C{"copy"}.
    @raise JSONFormError: for what stands for nothing that can be sent.
    """
    if isinstance(form, list):
        return [fromJSON(v, types) for v in form]
    if not isinstance(form, dict):
        return form
    ours = [k for k in form if k.startswith("$") and not k.startswith("$$")]
    if not ours:
        return {_unescape(k): fromJSON(v, types) for k, v in form.items()}
    if ours == ["$bytes"]:
        if len(form) != 1:
            raise JSONFormError('{"$bytes": ...} holds nothing else')
        if not isinstance(form["$bytes"], str):
            raise JSONFormError("$bytes is a base64 string")
        try:
            return base64.b64decode(form["$bytes"], validate=True)
        except binascii.Error as e:
            raise JSONFormError(f"$bytes is not base64 ({e})") from None
    if ours == ["$type"]:
        fields = {_unescape(k): fromJSON(v, types)
                  for k, v in form.items() if k != "$type"}
        return _copy(form["$type"], fields, types)
    other = next((k for k in ours if k not in ("$type", "$bytes")), ours[-1])
    raise JSONFormError(
        f"{other!r} is not a key aurora reads ($type, $bytes, each alone); a key "
        f"that starts with $ is written with one more: {_escape(other)!r}")


def _copy(name: Any, fields: dict[str, Any], types: Mapping[str, Mapping[str, Any]]) -> OpaqueCopy:
    info = types.get(name) if isinstance(name, str) else None
    if info is None or info.get("kind") != "copy":
        # The application's: aurora's own base classes are declared too.
        copies = sorted(n for n, i in types.items()
                        if i.get("kind") == "copy" and not n.startswith("aurora."))
        shown = ", ".join(copies[:_MAX_LISTED]) or "none"
        more = f" and {len(copies) - _MAX_LISTED} more" if len(copies) > _MAX_LISTED else ""
        what = "is not a type the server offers" if info is None else \
            f"is {_KINDS.get(str(info.get('kind')), 'no')} type, not a copy"
        raise JSONFormError(
            f"$type {errors._safeRepr(name)} {what}; the server's copy types: "
            f"{shown}{more}")
    declared = list(info.get("fields") or ())
    unknown = [f for f in fields if f not in declared]
    if unknown:
        raise JSONFormError(f"{name} has no field {unknown[0]!r} "
                            f"(its fields: {', '.join(declared)})")
    # What a relay builds for a type it never imported: sent, it is the
    # type name and the fields, and the server builds its own class.
    copy = OpaqueCopy.__new__(OpaqueCopy)
    copy.__dict__.update(typeName=name, _fields=tuple(declared),
                         keyField=info.get("keyField"))
    copy._setState(fields)
    return copy


# Epytext inline markup, innermost first: C{x}, L{x}, L{text <target>}, I{x}...
_MARKUP = re.compile(r"\b([A-Z])\{([^{}]*)\}")
# A field line: "@param name: text", "@return: text", "@raise Error: text".
_FIELD = re.compile(r"^([ \t]*)@(\w+)(?:[ \t]+([^:\n]+))?:", re.MULTILINE)
_FIELD_WORDS = {"return": "returns", "returns": "returns", "raise": "raises",
                "raises": "raises", "param": "", "ivar": "", "type": "type of",
                "rtype": "return type"}


_MAX_NESTING = 8


def plainText(doc: str) -> str:
    """C{doc} without epytext markup: what C{aurora ls} prints of a docstring."""
    def inline(m: re.Match[str]) -> str:
        tag, text = m.group(1), m.group(2)
        if tag in "LU" and "<" in text:  # L{the registry <aurora.Registry>}
            text = text.split("<", 1)[0].strip()
        return {"lb": "{", "rb": "}"}.get(text, text) if tag == "E" else text

    def field(m: re.Match[str]) -> str:
        word = _FIELD_WORDS.get(m.group(2), m.group(2))
        label = " ".join(filter(None, (word, m.group(3))))
        return f"{m.group(1)}{label}:"

    # Each pass removes the innermost markup; a docstring comes from the
    # server, so the passes are few whatever its nesting (what is left of
    # deeper markup is shown as it is).
    for _ in range(_MAX_NESTING):
        plain = _MARKUP.sub(inline, doc)
        if plain == doc:
            break
        doc = plain
    return _FIELD.sub(field, doc)


def _say(err: TextIO, problem: Any) -> None:
    """The one line of a failure: what the server said is in it, made safe."""
    err.write(f"aurora: {errors._safeText(problem, 2000)}\n")


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other failure."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="aurora", description="Look at and call an aurora registry.",
        epilog="Values are JSON: {\"$type\": \"myapp.User\", ...} is a copy of a "
               "type the server offers, {\"$bytes\": \"<base64>\"} bytes, \"$$key\" "
               "a key that starts with $.  Exit status: 0 done, 2 usage, bad JSON or "
               "unknown $type, 3 no connection or login refused, 4 unknown interface "
               "or method, 5 arguments do not fit, 6 the method raised, 7 watch of "
               "what is not a model, 1 anything else.")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for a silent server and for each call "
                             "(default 10); a refused connection fails at once")
    parser.add_argument("--user", help="log in as this user (over TLS)")
    parser.add_argument("--password-file",
                        help="file holding the password for --user (else read "
                             "from stdin, or prompted)")
    parser.add_argument("--allow-insecure-login", action="store_true",
                        help="send the --user password even on a connection "
                             "without TLS (local development only)")
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("ls", help="the interfaces offered, with their methods",
                        description="e.g. aurora ls tcp:127.0.0.1:8789")
    ls.add_argument("endpoint")
    for name, text in (("call", "call a method; print its result as JSON"),
                       ("watch", "fetch a model and print each change until Ctrl-C")):
        p = sub.add_parser(name, help=text, description=(
            f"e.g. aurora {name} tcp:127.0.0.1:8789 myapp.IUserManager "
            f"getModel '\"alice\"'  (each argument is JSON)"))
        p.add_argument("endpoint")
        p.add_argument("interface")
        p.add_argument("method")
        p.add_argument("args", nargs="*", default=[], metavar="JSON-ARG")
    pw = sub.add_parser(
        "passwd", help="add or change a user in a password file (twistd --passwd)",
        description="e.g. aurora passwd /etc/aurora/passwd alice --interfaces "
                    "myapp.IUserManager  (reads the password from stdin when it "
                    "is not a terminal)")
    pw.add_argument("file")
    pw.add_argument("user")
    pw.add_argument("--interfaces", default="*",
                    help="comma-separated dotted interface names, or * (default)")
    pw.add_argument("--certificate-only", action="store_true",
                    help="no password: a mutual-TLS client certificate with this name")
    return parser


def _passwd(args: argparse.Namespace, err: TextIO) -> int:
    import getpass

    password = None
    if not args.certificate_only:
        if sys.stdin.isatty():
            password = getpass.getpass(f"password for {args.user}: ")
            if getpass.getpass("again: ") != password:
                err.write("aurora: the passwords differ\n")
                return EXIT_USAGE
        else:
            password = sys.stdin.readline().rstrip("\n")
        if not password:
            err.write("aurora: empty password\n")
            return EXIT_USAGE
    interfaces = None if args.interfaces.strip() == "*" else [
        i.strip() for i in args.interfaces.split(",") if i.strip()]
    try:
        auth.setPassword(args.file, args.user, password, interfaces)
    except (OSError, ValueError) as e:
        _say(err, e)
        return EXIT_OTHER
    return EXIT_OK


def _password(args: argparse.Namespace) -> bytes:
    if args.password_file:
        try:
            with open(args.password_file, "rb") as f:
                return f.read().strip()
        except OSError as e:
            raise _Failed(EXIT_USAGE, f"cannot read --password-file "
                                      f"{args.password_file!r}: {e.strerror}") from None
    if not sys.stdin.isatty():
        # Piped in: read it (getpass would warn that it cannot hide it).
        password = sys.stdin.readline().rstrip("\n")
    else:
        import getpass

        password = getpass.getpass(f"password for {args.user}: ")
    if not password:
        raise _Failed(EXIT_USAGE, f"no password for --user {args.user}: give it with "
                                  "--password-file FILE, on stdin, or at the prompt")
    return password.encode("utf-8")


def _parseArgs(raw: list[str]) -> list[Any]:
    forms = []
    for text in raw:
        try:
            forms.append(json.loads(text))
        except RecursionError:
            raise _Failed(EXIT_USAGE, f"argument {errors._safeText(text, 40)!r}...: "
                                      "nested too deeply") from None
        except json.JSONDecodeError as e:
            hint = ""
            if text and text[0] not in '"[{-0123456789':
                # The commonest slip: a bare word where a JSON string is meant.
                hint = f" (a string is JSON in quotes: '\"{errors._safeText(text, 40)}\"')"
            raise _Failed(EXIT_USAGE, f"argument {text!r} is not JSON: {e}{hint}") from None
    return forms


def _values(raw: list[str], forms: list[Any],
            types: Mapping[str, Mapping[str, Any]]) -> list[Any]:
    values = []
    for text, form in zip(raw, forms):
        try:
            values.append(fromJSON(form, types))
        except JSONFormError as e:
            raise _Failed(EXIT_USAGE, f"argument {errors._safeText(text, 60)!r}: {e}") \
                from None
    return values


def _status(e: BaseException) -> int:
    if isinstance(e, (errors.ConnectionFailed, errors.ConnectionLost,
                      errors.LoginFailed, errors.Timeout)):
        return EXIT_CONNECTION
    if isinstance(e, (errors.UnknownInterface, errors.NoSuchMethod)):
        return EXIT_UNKNOWN
    if isinstance(e, errors.BadArguments):
        return EXIT_ARGUMENTS
    if isinstance(e, errors.Error):
        return EXIT_REMOTE
    return EXIT_OTHER


@implementer(IStreamClientEndpoint)
class _FailFast:
    """
    A client endpoint whose first failed attempt fires C{failed} with the
    reason: the connection refused, or lost before PB's handshake (an
    untrusted certificate, a peer that is not aurora).  A one-shot command
    says so at once; the timeout is for silence.
    """

    def __init__(self, endpoint: Any, description: str) -> None:
        self.endpoint = endpoint
        self.description = description
        self.failed: defer.Deferred = defer.Deferred()
        self.tls: bool | None = None  # whether the last connection was TLS

    def __repr__(self) -> str:
        return self.description  # how the Client names it in messages

    def _fail(self, why: str) -> None:
        if not self.failed.called:
            self.failed.callback(why)

    def connect(self, factory: Any) -> defer.Deferred:
        def connected(protocol: Any) -> Any:
            # ClientService's proxy passes these on to aurora's Broker.
            self.tls = ISSLTransport.providedBy(protocol.transport)
            protocol.whenReady().addErrback(lambda f: self._fail(f.getErrorMessage()))
            return protocol

        def failed(f: Failure) -> Failure:
            self._fail(f.getErrorMessage())
            return f

        return self.endpoint.connect(factory).addCallbacks(connected, failed)


def _first(*ds: defer.Deferred) -> defer.Deferred:
    """Whichever of C{ds} fires first, result or failure."""
    done: defer.Deferred = defer.Deferred()

    def fired(result: Any) -> None:
        if not done.called:
            done.callback(result) if not isinstance(result, Failure) else done.errback(result)

    for d in ds:
        d.addBoth(fired)
    return done


def _badEndpoint(text: str, e: Exception) -> str:
    # Twisted's parser raises ValueError, KeyError, TypeError...; a
    # trustRoots directory it cannot list is an UnlistableError whose str()
    # is empty: its cause names the directory.
    cause = getattr(e, "originalException", None)
    why = (f"{type(e).__name__}: {e}" if str(e) else
           f"{type(cause).__name__}: {cause}" if cause is not None else type(e).__name__)
    return (f"bad endpoint {text!r} ({why}); a client endpoint looks like "
            "tcp:HOST:PORT or tls:HOST:PORT:trustRoots=DIR")


def _loginRefused(e: errors.LoginFailed, args: argparse.Namespace,
                  endpoint: _FailFast) -> str:
    """A refused login in the CLI's own words: its flags, not Client's."""
    if not args.user:
        return (f"LoginFailed: {e} (give --user NAME; its password comes from "
                "--password-file FILE, stdin, or a prompt)")
    if not args.allow_insecure_login and endpoint.tls is False:
        # Refused by the client itself, before the password was sent.
        return (f"LoginFailed: not sending the password of --user {args.user} to "
                f"{args.endpoint}: the connection is not TLS; connect with "
                "tls:HOST:PORT:trustRoots=DIR, or add --allow-insecure-login for "
                "local development")
    if "encrypted connection" in str(e):
        return f"LoginFailed: {e}"  # the server's reason already says what to do
    return (f"LoginFailed: {e} (check --user {args.user} and the password given by "
            "--password-file FILE, stdin, or the prompt)")


async def _ls(registry: Any, out: TextIO) -> None:
    for name in await registry.interfaces():
        manager = await registry.getManager(name)
        iface = _schema.findInterface(manager, name)
        # Every word here is the server's: one line each, no terminal escapes.
        out.write(f"{errors._safeText(name, 200)}\n")
        if iface is None:
            continue
        for method, desc in sorted(_schema.methodsOf(iface).items()):
            # Only the first line is shown: only it is read (a server's
            # docstring may be megabytes).
            doc = (desc.getDoc() or "").strip()[:2000].split("\n", 1)[0]
            first = plainText(doc).strip()
            line = f"{method}{desc.getSignatureString()}" + (f"  {first}" if first else "")
            out.write(f"  {errors._safeText(line, 1000)}\n")


async def _call(registry: Any, args: argparse.Namespace, values: list[Any]) -> Any:
    manager = await registry.getManager(args.interface)
    return await manager.callRemote(args.method, *values)


async def _watch(client: Client, registry: Any, args: argparse.Namespace,
                 values: list[Any], out: TextIO, err: TextIO) -> None:
    model = await _call(registry, args, values)
    if not isinstance(model, Model):
        raise _Failed(EXIT_NOT_A_MODEL, f"{args.interface}.{args.method} returned "
                      f"{_kindOf(model)}, not a model: nothing to watch (call it)")

    watching: defer.Deferred = defer.Deferred()  # until interrupted, or the reader goes

    def changed(name: str, value: Any, old: Any) -> None:
        try:
            out.write(json.dumps({"name": name, "value": toJSON(value),
                                  "old": toJSON(old)}) + "\n")
            out.flush()
        except BrokenPipeError as e:  # | head -1: the reader is gone
            if not watching.called:
                watching.errback(e)

    def down() -> None:
        err.write("aurora: connection lost; reconnecting\n")

    dispatcher.connect(changed, signal=signals.changed, sender=model, weak=False)
    dispatcher.connect(down, signal=signals.disconnected, sender=client, weak=False)
    try:
        out.write(json.dumps(toJSON(model)) + "\n")
        out.flush()
        await watching  # the client reconnects by itself meanwhile
    finally:
        # Stopping the client sends `disconnected` too: not a lost connection.
        # (weak=False as connected: otherwise pydispatcher removes nothing.)
        dispatcher.disconnect(down, signal=signals.disconnected, sender=client, weak=False)
        dispatcher.disconnect(changed, signal=signals.changed, sender=model, weak=False)


def _kindOf(value: Any) -> str:
    if isinstance(value, Wrapper):
        return "a manager"
    if value is None:
        return "None"
    name = value.typeName if isinstance(value, Declared) else type(value).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


async def run(reactor: Any, argv: list[str], out: TextIO | None = None,
              err: TextIO | None = None) -> int:
    """
    Run one command; the exit status.

    @param out: where results go (default: C{sys.stdout}).
    @param err: where the one line of a failure goes (default: C{sys.stderr}).
    """
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if args.command == "passwd":
        return _passwd(args, err)
    try:
        credentials = None if not args.user else UsernamePassword(
            args.user.encode("utf-8"), _password(args))
        forms = _parseArgs(getattr(args, "args", []))
    except _Failed as e:
        _say(err, e)
        return e.status
    try:
        endpoint = _FailFast(clientFromString(reactor, args.endpoint), args.endpoint)
    except Exception as e:
        _say(err, _badEndpoint(args.endpoint, e))
        return EXIT_USAGE
    client = Client(endpoint, credentials, connectTimeout=args.timeout,
                    callTimeout=args.timeout, opaque=True,
                    allowInsecureLogin=args.allow_insecure_login, reactor=reactor)
    try:
        registry = await _first(client.getRegistry(), endpoint.failed)
        if isinstance(registry, str):
            # The first attempt failed (refused, no such host, an untrusted
            # certificate): a one-shot command says so at once.
            raise errors.ConnectionFailed(
                f"cannot connect to {args.endpoint}: {registry}", endpoint=args.endpoint)
        if args.command == "ls":
            await _ls(registry, out)
            return EXIT_OK
        values = _values(args.args, forms, await registry.types())
        if args.command == "call":
            result = await _call(registry, args, values)
            out.write(json.dumps(toJSON(result)) + "\n")
        else:
            await _watch(client, registry, args, values, out, err)
        return EXIT_OK
    except _Failed as e:
        _say(err, e)
        return e.status
    except BrokenPipeError:
        # The reader went away (| head): quiet, as other tools are.  What is
        # still buffered for stdout must not fail again at exit.
        if out is sys.stdout:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    except defer.CancelledError:
        return EXIT_OK  # interrupted: main() chooses the status
    except errors.LoginFailed as e:
        _say(err, _loginRefused(e, args, endpoint))
        return EXIT_CONNECTION
    except Exception as e:
        # An application error the CLI has no class for still has its name.
        label = e.typeName.rpartition(".")[2] if isinstance(e, errors.Error) \
            else type(e).__name__
        status = _status(e)
        if status == EXIT_REMOTE:
            # What the method raised is its outcome: on stdout, as JSON.
            try:
                out.write(json.dumps(toJSON(e)) + "\n")
            except BrokenPipeError:
                pass  # the one line on stderr still says it
        _say(err, f"{label}: {e}")
        return status
    finally:
        await client.stop()
def main(argv: list[str] | None = None) -> None:
    """The C{aurora} console script."""
    argv = sys.argv[1:] if argv is None else argv

    async def go(reactor: Any) -> None:
        interrupted: list[int] = []
        running = defer.ensureDeferred(run(reactor, argv))

        def stop(signum: int, frame: Any) -> None:
            # The shell's convention: 128 + the signal (130 for Ctrl-C, 143
            # for SIGTERM); interrupted is not success.
            interrupted.append(128 + signum)
            reactor.callFromThread(running.cancel)

        def install() -> None:
            # After the reactor's own handlers (react calls us before run()).
            for signum in (signal.SIGINT, signal.SIGTERM):
                signal.signal(signum, stop)

        reactor.callWhenRunning(install)
        try:
            status = await running
        except defer.CancelledError:
            status = EXIT_OK
        if interrupted:
            status = interrupted[0]
        if status:
            raise SystemExit(status)

    task.react(lambda reactor: defer.ensureDeferred(go(reactor)))
