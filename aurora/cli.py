"""
The operator's command line: C{aurora} (or C{python -m aurora}).

    aurora ls ENDPOINT
    aurora call ENDPOINT DOTTED.INTERFACE METHOD [JSON-ARG ...]
    aurora watch ENDPOINT DOTTED.INTERFACE METHOD [JSON-ARG ...]
    aurora passwd FILE USER [--interfaces A,B | *] [--certificate-only]

ENDPOINT is a Twisted client endpoint string (C{tcp:127.0.0.1:8789},
C{tls:host:8790:trustRoots=/etc/aurora/ca}).  The CLI needs none of the
application's modules: interfaces arrive as descriptions and copies and
models as opaque objects, printed as JSON of their declared fields.

Exit status: 0 done; 2 bad usage or an argument that is not JSON; 3 no
connection (refused, timed out, lost, login refused); 4 unknown interface or method; 5 the
arguments do not fit the method; 6 the method raised an error; 1 anything
else.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import decimal
import json
import os
import signal
import sys
from typing import Any, TextIO

from pydispatch import dispatcher
from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer, task
from twisted.internet.endpoints import clientFromString
from twisted.python.failure import Failure

from aurora import _schema, auth, errors, signals
from aurora.client import Client
from aurora.remote import Wrapper
from aurora.remoteable import Copyable, Model

EXIT_OK, EXIT_OTHER, EXIT_USAGE, EXIT_CONNECTION, EXIT_UNKNOWN, EXIT_ARGUMENTS, \
    EXIT_REMOTE = 0, 1, 2, 3, 4, 5, 6
EXIT_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a closed pipe


class _Failed(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def toJSON(value: Any) -> Any:
    """A JSON-ready form of anything that can arrive."""
    if isinstance(value, (Copyable, Model, errors.Error)):
        return {k: toJSON(v) for k, v in value._state().items()}
    if isinstance(value, Wrapper):
        return f"<manager {', '.join(value._names)}>"
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        return {str(k): toJSON(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [toJSON(v) for v in value]
    if isinstance(value, (datetime.date, datetime.time, datetime.timedelta)):
        return str(value) if isinstance(value, datetime.timedelta) else value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aurora", description="Look at and call an aurora registry.",
        epilog="Exit status: 0 done, 2 usage or bad JSON, 3 no connection, "
               "4 unknown interface or method, 5 arguments do not fit, "
               "6 the method raised, 1 anything else.  Exit 3 also for a refused login.")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the connection and each call")
    parser.add_argument("--user", help="log in as this user (over TLS)")
    parser.add_argument("--password-file",
                        help="file holding the password for --user (else prompted)")
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
        p.add_argument("args", nargs="*", metavar="JSON-ARG")
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


def _passwd(args: argparse.Namespace) -> int:
    import getpass

    password = None
    if not args.certificate_only:
        if sys.stdin.isatty():
            password = getpass.getpass(f"password for {args.user}: ")
            if getpass.getpass("again: ") != password:
                sys.stderr.write("aurora: the passwords differ\n")
                return EXIT_USAGE
        else:
            password = sys.stdin.readline().rstrip("\n")
        if not password:
            sys.stderr.write("aurora: empty password\n")
            return EXIT_USAGE
    interfaces = None if args.interfaces.strip() == "*" else [
        i.strip() for i in args.interfaces.split(",") if i.strip()]
    try:
        auth.setPassword(args.file, args.user, password, interfaces)
    except (OSError, ValueError) as e:
        sys.stderr.write(f"aurora: {e}\n")
        return EXIT_OTHER
    return EXIT_OK


def _parseArgs(raw: list[str]) -> list[Any]:
    values = []
    for text in raw:
        try:
            values.append(json.loads(text))
        except json.JSONDecodeError as e:
            raise _Failed(EXIT_USAGE, f"argument {text!r} is not JSON: {e}") from None
    return values


def _status(e: BaseException) -> int:
    if isinstance(e, (errors.ConnectionFailed, errors.ConnectionLost,
                      errors.LoginFailed)):
        return EXIT_CONNECTION
    if isinstance(e, (errors.UnknownInterface, errors.NoSuchMethod)):
        return EXIT_UNKNOWN
    if isinstance(e, errors.BadArguments):
        return EXIT_ARGUMENTS
    if isinstance(e, errors.Error):
        return EXIT_REMOTE
    return EXIT_OTHER


class _FailFast:
    """A client endpoint whose first failed attempt fires C{failed} with the reason."""

    def __init__(self, endpoint: Any, description: str) -> None:
        self.endpoint = endpoint
        self.description = description
        self.failed: defer.Deferred = defer.Deferred()

    def __repr__(self) -> str:
        return self.description  # how the Client names it in messages

    def connect(self, factory: Any) -> defer.Deferred:
        def failed(f: Any) -> Any:
            if not self.failed.called:
                self.failed.callback(f.getErrorMessage())
            return f

        return self.endpoint.connect(factory).addErrback(failed)


def _first(*ds: defer.Deferred) -> defer.Deferred:
    """Whichever of C{ds} fires first, result or failure."""
    done: defer.Deferred = defer.Deferred()

    def fired(result: Any) -> None:
        if not done.called:
            done.callback(result) if not isinstance(result, Failure) else done.errback(result)

    for d in ds:
        d.addBoth(fired)
    return done


async def _ls(registry: Any, out: TextIO) -> None:
    for name in await registry.interfaces():
        manager = await registry.getManager(name)
        iface = _schema.findInterface(manager, name)
        out.write(f"{name}\n")
        if iface is None:
            continue
        for method, desc in sorted(_schema.methodsOf(iface).items()):
            doc = (desc.getDoc() or "").strip().splitlines()
            first = f"  {doc[0]}" if doc else ""
            out.write(f"  {method}{desc.getSignatureString()}{first}\n")


async def _call(registry: Any, args: argparse.Namespace, values: list[Any]) -> Any:
    manager = await registry.getManager(args.interface)
    return await manager.callRemote(args.method, *values)


async def _watch(client: Client, registry: Any, args: argparse.Namespace,
                 values: list[Any], out: TextIO) -> None:
    model = await _call(registry, args, values)
    if not isinstance(model, Model):
        raise _Failed(EXIT_OTHER, f"{args.interface}.{args.method} returned "
                                  f"{type(model).__name__}, not a model")

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
        sys.stderr.write("aurora: connection lost; reconnecting\n")

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


async def run(reactor: Any, argv: list[str], out: TextIO = sys.stdout) -> int:
    """Run one command; the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    if args.command == "passwd":
        return _passwd(args)
    credentials = None
    if args.user:
        if args.password_file:
            with open(args.password_file, "rb") as f:
                password = f.read().strip()
        elif not sys.stdin.isatty():
            # Piped in: read it (getpass would warn that it cannot hide it).
            password = sys.stdin.readline().rstrip("\n").encode("utf-8")
        else:
            import getpass

            password = getpass.getpass(f"password for {args.user}: ").encode("utf-8")
        credentials = UsernamePassword(args.user.encode("utf-8"), password)
    try:
        endpoint = _FailFast(clientFromString(reactor, args.endpoint), args.endpoint)
    except Exception as e:  # Twisted's endpoint parser: ValueError, KeyError, ...
        sys.stderr.write(
            f"aurora: bad endpoint {args.endpoint!r} ({type(e).__name__}: {e}); a "
            "client endpoint looks like tcp:HOST:PORT or tls:HOST:PORT:trustRoots=DIR\n")
        return EXIT_USAGE
    client = Client(endpoint, credentials, connectTimeout=args.timeout,
                    callTimeout=args.timeout, opaque=True,
                    allowInsecureLogin=args.allow_insecure_login, reactor=reactor)
    try:
        values = _parseArgs(getattr(args, "args", []))
        registry = await _first(client.getRegistry(), endpoint.failed)
        if isinstance(registry, str):
            # The first attempt failed (refused, no such host): a one-shot
            # command says so at once; the timeout is for silence.
            raise errors.ConnectionFailed(
                f"cannot connect to {args.endpoint}: {registry}", endpoint=args.endpoint)
        if args.command == "ls":
            await _ls(registry, out)
        elif args.command == "call":
            result = await _call(registry, args, values)
            out.write(json.dumps(toJSON(result)) + "\n")
        else:
            await _watch(client, registry, args, values, out)
        return EXIT_OK
    except _Failed as e:
        sys.stderr.write(f"aurora: {e}\n")
        return e.status
    except BrokenPipeError:
        # The reader went away (| head): quiet, as other tools are.  What is
        # still buffered for stdout must not fail again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
    except defer.CancelledError:
        return EXIT_OK  # interrupted: main() chooses the status
    except Exception as e:
        # An application error the CLI has no class for still has its name.
        label = e.typeName.rpartition(".")[2] if isinstance(e, errors.Error) \
            else type(e).__name__
        sys.stderr.write(f"aurora: {label}: {e}\n")
        return _status(e)
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
