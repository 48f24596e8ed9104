"""
A server process for the attack suite (tests/attacks.py, issue #11):

    python -m tests.attackserve [--port N] [--tls] [--password-file PATH]
        [--relay-upstream PORT [--allow NAME]...] [--option NAME=VALUE]...
        [--max-seconds S]

Serves tests.app's UserManager (as IUserManager) and its Admin (as IAdmin),
or, with --relay-upstream, runs an aurora.relay.Relay of the server on
127.0.0.1:PORT (never importing tests.app).  Each --option is passed to
Server(...) as a keyword, its value parsed as JSON; a name Server does not
take ends the process at once with a clear error (exit status 2).

Logs with twisted.logger to stderr, one JSON object per line (the event,
plus "text": the formatted message and, for a failure, "traceback").
Prints "pid PID", then "listening on PORT" (and, with --tls, "trust DIR":
the directory a client passes as trustRoots) on stdout.  Exits when its
standard input closes (whoever started it is gone) or after --max-seconds
(900 by default).
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import shutil
import sys
import tempfile
from typing import Any

from twisted.internet import defer, task


def _fail(message: str) -> None:
    sys.stderr.write(f"attackserve: {message}\n")
    sys.stderr.flush()
    raise SystemExit(2)


def serverKeywords() -> list[str]:
    """The keyword parameters aurora.Server takes (besides registry, portal)."""
    from aurora import Server

    return [name for name, p in inspect.signature(Server).parameters.items()
            if name not in ("registry", "portal", "reactor", "clock")
            and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def parseOptions(pairs: list[str]) -> dict[str, Any]:
    accepted = serverKeywords()
    options: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        if not sep or not name:
            _fail(f"--option wants NAME=VALUE, not {pair!r}")
        if name not in accepted:
            _fail(f"unknown Server option {name!r}: this aurora's Server takes "
                  f"{', '.join(accepted)}")
        try:
            options[name] = json.loads(text)
        except ValueError as e:
            _fail(f"--option {name}: {text!r} is not JSON ({e})")
    return options


def _observer(out: Any) -> Any:
    from twisted.logger import eventAsJSON, formatEvent

    def observe(event: dict) -> None:
        text = formatEvent(event)
        # "text" first: a reader that keeps only the start of long lines
        # still sees what the line is about.
        record: dict[str, Any] = {"text": text, **event}
        failure = event.get("log_failure")
        if failure is not None:
            try:
                record["traceback"] = failure.getTraceback()
            except Exception as e:  # never lose the line itself
                record["traceback"] = f"(no traceback: {e!r})"
        try:
            line = eventAsJSON(record)
        except Exception as e:
            line = json.dumps({"text": text, "unserializable": repr(e)})
        out.write(line.replace("\n", "\\n") + "\n")
        out.flush()

    return observe


def _dieWithParent(maxSeconds: float) -> None:
    """
    Exit when standard input closes (the process that started this one is
    gone: a test run that was killed must not leave servers behind), or
    after C{maxSeconds} at the latest.
    """
    import threading

    def watch() -> None:
        # The file descriptor, not sys.stdin: a daemon thread blocked in a
        # buffered read holds a lock the interpreter wants at exit.
        try:
            while os.read(0, 65536):
                pass
        except OSError:
            pass
        os._exit(3)

    threading.Thread(target=watch, daemon=True).start()
    timer = threading.Timer(maxSeconds, os._exit, (4,))
    timer.daemon = True
    timer.start()


async def main(reactor: Any, argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.attackserve")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--password-file")
    parser.add_argument("--relay-upstream", type=int)
    parser.add_argument("--allow", action="append", default=None)
    parser.add_argument("--option", action="append", default=[])
    parser.add_argument("--max-seconds", type=float, default=900.0,
                        help="exit after this long whatever happens (default 900)")
    args = parser.parse_args(argv)
    options = parseOptions(args.option)
    if args.allow and args.relay_upstream is None:
        _fail("--allow needs --relay-upstream")

    _dieWithParent(args.max_seconds)
    from twisted.logger import globalLogBeginner

    globalLogBeginner.beginLoggingTo([_observer(sys.stderr)],
                                     redirectStandardIO=False)

    endpoint = f"tcp:{args.port}:interface=127.0.0.1"
    trust = None
    if args.tls:
        import pathlib

        from tests.helpers import makeCertificate

        directory = tempfile.mkdtemp(prefix="aurora-attack-tls-")
        reactor.addSystemEventTrigger(
            "after", "shutdown", shutil.rmtree, directory, True)
        key, cert = makeCertificate(pathlib.Path(directory))
        endpoint = (f"ssl:{args.port}:privateKey={key}:certKey={cert}"
                    ":interface=127.0.0.1")
        trust = os.path.join(directory, "trust")

    try:
        if args.relay_upstream is not None:
            # A relay imports nothing of the application's.
            sys.modules["tests.app"] = None  # type: ignore[assignment]
            from aurora import auth
            from aurora.relay import Relay

            if args.password_file:
                options["portal"] = auth.portal(args.password_file)
            relay = Relay(f"tcp:127.0.0.1:{args.relay_upstream}", allow=args.allow,
                          clientOptions={"heartbeat": 5.0}, serverOptions=options,
                          reactor=reactor)
            port = (await relay.start(endpoint))[0]
        else:
            from aurora import Registry, Server, auth
            from tests.app import IAdmin, IUserManager, UserManager

            manager = UserManager()
            registry = Registry()
            registry.register(IUserManager, manager)
            registry.register(IAdmin, manager.admin)
            portal = auth.portal(args.password_file) if args.password_file else None
            server = Server(registry, portal, reactor=reactor, **options)
            port = await server.listen(endpoint)
    except (TypeError, ValueError) as e:
        _fail(f"cannot start: {e}")
    print(f"pid {os.getpid()}", flush=True)
    if trust is not None:
        print(f"trust {trust}", flush=True)
    print(f"listening on {port.getHost().port}", flush=True)
    await defer.Deferred()  # until killed


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(main(reactor, sys.argv[1:])))
