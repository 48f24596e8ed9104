"""
The C{twistd registry} plugin: options and the service it runs::

    twistd -n registry --listen tcp:8789:interface=127.0.0.1 --setup myapp.setup:register
    twistd -n registry --upstream tcp:origin:8789 --listen tcp:8790
"""

from __future__ import annotations

import importlib
import math
import os
import re
import sys
import tomllib
from typing import Any, Callable, Mapping, NoReturn

from twisted.application import service
from twisted.internet import defer
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.logger import Logger, jsonFileLogObserver
from twisted.python import usage

from twisted.cred.credentials import UsernamePassword

from aurora import auth
from aurora.registry import Registry
from aurora.relay import Relay
from aurora.server import Server

_DEFAULT_LISTEN = "tcp:8789:interface=127.0.0.1"

# name in the TOML file -> (option, kind)
_CONFIG_KEYS = {
    "listen": "list", "setup": "list", "upstream": "str", "allow": "list",
    "heartbeat": "float", "passwd": "str", "upstream-user": "str",
    "upstream-password-file": "str", "error-detail": "str",
}

_ERROR_DETAILS = ("type", "message")

# What --limit NAME=VALUE (and a [limits] table) may set: Server's keyword
# arguments of the same names (see the README's Threat model).
_LIMITS: dict[str, type] = {
    **{name: int for name in (
        "maxConnectionsPerAddress", "referenceLimit", "maxReferenceLimit",
        "maxPending", "maxMessageBytes", "maxMessageItems", "maxDepth",
        "maxDecodingBytes", "maxDecodingItems", "maxPendingCalls",
        "maxOutboundBytes", "loginThreads", "maxWaitingLogins")},
    **{name: float for name in (
        "idleTimeout", "maxLag", "logInterval", "loginDelay", "maxLoginDelay")},
}
_GRANTABLE = ("referenceLimit", "maxMessageBytes", "maxMessageItems",
              "maxPendingCalls", "maxOutboundBytes")


def _fail(problem: str) -> NoReturn:
    # One line and a non-zero exit: twistd would otherwise print the whole
    # usage text (for UsageError) or a traceback (for anything else).
    raise SystemExit(f"twistd registry: {problem}")


_FORMS = {
    "--listen": "a server endpoint looks like tcp:8789:interface=127.0.0.1 or "
                "ssl:8790:privateKey=KEY.pem:certKey=CERT.pem",
    "--upstream": "a client endpoint looks like tcp:HOST:8789 or "
                  "tls:HOST:8790:trustRoots=DIR",
}


def _badEndpoint(option: str, endpoint: str, e: Exception) -> str:
    """One line: the endpoint, what is wrong with it in the user's terms, the form."""
    why = str(e) or type(e).__name__
    unknown = re.search(r"unexpected keyword argument '(\w+)'", why)
    if unknown:  # Twisted's parser function names are not the user's concern
        why = f"it has no option {unknown.group(1)!r}"
    elif type(e).__module__.startswith("OpenSSL"):
        why = (f"cannot read its key or certificate ({why}): privateKey= must name a "
               "PEM private key and certKey= a PEM certificate")
    return f"bad {option} endpoint {endpoint!r}: {why}; {_FORMS[option]}"


_LEAST_SECONDS = 0.01


def _positive(kind: type, option: str) -> Callable[[str], Any]:
    """
    An option's coercion: a number of C{kind} over 0, or one line and a
    non-zero exit (usage.Options would print the whole usage text).
    """
    def coerce(value: str) -> Any:
        try:
            number = kind(value)
        except ValueError:
            number = None
        if number is None or not math.isfinite(number):
            _fail(f"{option} must be a {'whole ' if kind is int else ''}number, "
                  f"not {value!r}")
        if number <= 0:
            _fail(f"{option} must be more than 0, not {value}")
        if kind is float and number < _LEAST_SECONDS:
            # 1e-300 is more than 0, and a timer that fires at once, forever.
            _fail(f"{option} must be at least {_LEAST_SECONDS} (seconds), not {value}")
        return number

    coerce.coerceDoc = "More than 0."  # type: ignore[attr-defined]
    return coerce


class Options(usage.Options):
    synopsis = "[--listen ENDPOINT]... [--setup MODULE:CALLABLE]... [--upstream ENDPOINT]"
    examples = """\
Runs an aurora registry server, or a relay of an upstream registry.

Examples (--pidfile= keeps twistd from writing twistd.pid):
  twistd -n --pidfile= registry --listen tcp:8789:interface=127.0.0.1 --setup myapp.setup:register
      serve the managers that myapp.setup.register(registry) registers
  twistd -n --pidfile= registry --listen ssl:8790:privateKey=key.pem:certKey=cert.pem --setup ...
      the same over TLS (see the README for the whole recipe)
  twistd -n --pidfile= registry --upstream tcp:origin.example:8789 --listen tcp:8790 \\
         --allow myapp.interfaces.IUserManager
      a relay re-publishing one interface of an upstream registry
  twistd -n --pidfile= registry --listen ssl:8790:privateKey=key.pem:certKey=cert.pem \\
         --passwd /etc/aurora/passwd --setup myapp.setup:register
      require a login (add users with: aurora passwd /etc/aurora/passwd alice)
  twistd -n --pidfile= registry --listen mtls:8790:privateKey=key.pem:certKey=cert.pem:caCerts=ca.pem \\
         --passwd /etc/aurora/passwd --setup ...
      mutual TLS: the client certificate's name is the identity
  twistd -n --pidfile= registry --config /etc/aurora/registry.toml
      the same settings from a TOML file; options given here win
  twistd -n --pidfile= registry --passwd ... --grant relay-eu:referenceLimit=100000 \\
         --limit idleTimeout=120
      let the relay logging in as relay-eu hold 100,000 references; probe
      idle connections after 120 s (every limit: the README's Threat model)

--listen, --setup, --allow, --limit and --grant may be given more than once.  --setup names a
callable that receives the Registry and registers managers (it may return a
Deferred); managers that provide twisted.application.service.IService are
started before the registry listens and stopped, in reverse order, after it
stops listening.
"""

    def getUsage(self, width: int | None = None) -> str:
        # usage.Options reflows longdesc into one paragraph; keep the layout.
        return super().getUsage(width) + "\n" + self.examples

    optParameters = [
        ["upstream", "u", None,
         "client endpoint of an upstream registry: run as a relay "
         "(e.g. tcp:origin.example:8789)"],
        ["heartbeat", None, None,
         "seconds between the relay client's heartbeats (default 5)",
         _positive(float, "--heartbeat")],
        ["config", "c", None, "a TOML file with the same settings (e.g. registry.toml)"],
        ["passwd", None, None,
         "password file: require login (see `aurora passwd`); users, passwords "
         "and client-certificate names, each with its interfaces"],
        ["max-connections", None, 1000, "connections served at once",
         _positive(int, "--max-connections")],
        ["login-timeout", None, 30.0, "seconds a connection may take to log in",
         _positive(float, "--login-timeout")],
        ["upstream-user", None, None, "a relay logs in upstream as this user"],
        ["upstream-password-file", None, None,
         "file holding the password for --upstream-user"],
        ["error-detail", None, None,
         "what a caller learns of an unexpected exception: type (its type and "
         "an error id in the log; the default) or message (its message too, "
         "for development)"],
    ]
    optFlags = [
        ["anonymous", None, "with --passwd, also let anonymous clients in"],
        ["insecure-login", None,
         "accept passwords on connections without TLS (local development only)"],
        ["upstream-insecure-login", None,
         "a relay sends its --upstream-user password even to an upstream "
         "without TLS (local development only)"],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["setup"] = []
        self["allow"] = []
        self["limits"] = {}
        self["grants"] = {}

    def opt_listen(self, endpoint: str) -> None:
        """server endpoint to listen on, repeatable (default tcp:8789:interface=127.0.0.1)"""
        self["listen"].append(endpoint)

    opt_l = opt_listen

    def opt_setup(self, name: str) -> None:
        """MODULE:CALLABLE that registers managers, repeatable (e.g. myapp.setup:register)"""
        self["setup"].append(name)

    opt_s = opt_setup

    def opt_allow(self, name: str) -> None:
        """dotted interface name a relay re-publishes, repeatable (default: all)"""
        self["allow"].append(name)

    def opt_limit(self, setting: str) -> None:
        """NAME=VALUE: a server limit, repeatable (e.g. idleTimeout=120, maxPendingCalls=200)"""
        name, _, value = setting.partition("=")
        self["limits"][name.strip()] = _number(name.strip(), value, _LIMITS, "--limit")

    def opt_grant(self, setting: str) -> None:
        """IDENTITY:NAME=VALUE: raise a limit for one identity at login (anonymous: anyone not logged in as a user), repeatable (e.g. relay-eu:referenceLimit=100000)"""
        identity, _, rest = setting.partition(":")
        name, _, value = rest.partition("=")
        if not identity or not name:
            _fail(f"--grant {setting!r} must be IDENTITY:NAME=VALUE, "
                  "e.g. relay-eu:referenceLimit=100000")
        grantable = {n: int for n in _GRANTABLE}
        self["grants"].setdefault(identity, {})[name.strip()] = _number(
            name.strip(), value, grantable, "--grant")

    def postOptions(self) -> None:
        if self["config"]:
            self._readConfig(self["config"])
        if not self["listen"]:
            self["listen"] = [_DEFAULT_LISTEN]
        if self["heartbeat"] is None:
            self["heartbeat"] = 5.0
        if self["error-detail"] is None:
            self["error-detail"] = "type"
        if self["error-detail"] not in _ERROR_DETAILS:
            _fail(f"--error-detail must be {' or '.join(_ERROR_DETAILS)}, "
                  f"not {self['error-detail']!r}")
        from twisted.internet import reactor

        for endpoint in self["listen"]:
            try:
                serverFromString(reactor, endpoint)
            except Exception as e:
                _fail(_badEndpoint("--listen", endpoint, e))
        if self["upstream"]:
            try:
                clientFromString(reactor, self["upstream"])
            except Exception as e:
                _fail(_badEndpoint("--upstream", self["upstream"], e))
        elif self["allow"]:
            _fail("--allow restricts what a relay re-publishes: it needs --upstream")
        self["setupCallables"] = [_importCallable(name) for name in self["setup"]]
        self["portal"] = None
        if self["passwd"]:
            try:
                self["portal"] = auth.portal(self["passwd"], anonymous=self["anonymous"])
            except (OSError, ValueError) as e:
                _fail(f"--passwd {self['passwd']}: {e}")
        users = sorted(who for who in self["grants"] if who != "anonymous")
        if users and not self["passwd"]:
            # Without a password file nobody logs in as anyone: the grant
            # would silently never apply.
            _fail(f"--grant for {', '.join(users)} needs --passwd: without it nobody "
                  "logs in as a user (everyone is anonymous); or grant "
                  "anonymous:NAME=VALUE")
        self["upstreamCredentials"] = None
        if self["upstream-user"]:
            if not self["upstream-password-file"]:
                _fail("--upstream-user needs --upstream-password-file")
            try:
                with open(self["upstream-password-file"], "rb") as f:
                    password = f.read().strip()
            except OSError as e:
                _fail(f"cannot read --upstream-password-file: {e.strerror}")
            self["upstreamCredentials"] = UsernamePassword(
                self["upstream-user"].encode("utf-8"), password)

    def _readConfig(self, path: str) -> None:
        try:
            with open(path, "rb") as f:
                config = tomllib.load(f)
        except OSError as e:
            _fail(f"cannot read --config {path}: {e.strerror}")
        except tomllib.TOMLDecodeError as e:
            _fail(f"--config {path} is not valid TOML: {e}")
        for key, value in config.items():
            if key == "limits" and isinstance(value, dict):
                for name, number in value.items():  # the command line wins
                    self["limits"].setdefault(
                        name, _number(name, str(number), _LIMITS, f"--config {path}: limits"))
                continue
            if key == "grants" and isinstance(value, dict):
                for identity, table in value.items():
                    if not isinstance(table, dict):
                        _fail(f"--config {path}: grants.{identity} must be a table")
                    mine = self["grants"].setdefault(identity, {})
                    for name, number in table.items():
                        mine.setdefault(name, _number(
                            name, str(number), {n: int for n in _GRANTABLE},
                            f"--config {path}: grants.{identity}"))
                continue
            kind = _CONFIG_KEYS.get(key)
            if kind is None:
                _fail(f"--config {path}: unknown setting {key!r} "
                      f"(known: {', '.join(sorted(_CONFIG_KEYS))})")
            if kind == "list":
                value = [value] if isinstance(value, str) else value
                if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                    _fail(f"--config {path}: {key} must be a string or a list of strings")
                if not self[key]:  # the command line wins
                    self[key] = value
            elif kind == "float":
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    _fail(f"--config {path}: {key} must be a number")
                if self[key] is None:
                    self[key] = _positive(float, f"--config {path}: {key}")(str(value))
            else:
                if not isinstance(value, str):
                    _fail(f"--config {path}: {key} must be a string")
                if self[key] is None:
                    self[key] = value


def _number(name: str, value: str, known: Mapping[str, type], where: str) -> Any:
    kind = known.get(name)
    if kind is None:
        _fail(f"{where}: unknown limit {name!r} (known: {', '.join(sorted(known))})")
    return _positive(kind, f"{where}: {name}")(value.strip())


def _importCallable(name: str) -> Callable[[Registry], Any]:
    module, _, attr = name.partition(":")
    if not module or not attr:
        _fail(f"--setup {name!r} must be MODULE:CALLABLE, e.g. myapp.setup:register")
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like python -m: the current directory
    obj: Any
    try:
        obj = importlib.import_module(module)
    except Exception as e:
        _fail(f"--setup {name}: cannot import {module}: {type(e).__name__}: {e}")
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    if not callable(obj):
        _fail(f"--setup {name}: {module} has no callable {attr!r}")
    return obj


class RegistryService(service.Service):
    """
    Runs the registry: setup callables, then IService managers, then the
    listening ports; on stop, the reverse (ports and connections first, so
    clients see the disconnect at once, then managers, awaited).
    """

    log = Logger()

    def __init__(self, options: Options, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.options = options
        self.local = Registry()
        self.relay: Relay | None = None
        serverOptions = {"portal": options["portal"],
                         "allowInsecureLogin": options["insecure-login"],
                         "maxConnections": options["max-connections"],
                         "loginTimeout": options["login-timeout"],
                         "errorDetail": options["error-detail"],
                         # "anonymous" is whoever is not logged in as a user.
                         "grants": {None if who == "anonymous" else who: grant
                                    for who, grant in options["grants"].items()},
                         **options["limits"]}
        if options["upstream"]:
            self.relay = Relay(options["upstream"], allow=options["allow"] or None,
                               local=self.local,
                               clientOptions={"heartbeat": options["heartbeat"],
                                              "credentials": options["upstreamCredentials"],
                                              "allowInsecureLogin":
                                                  bool(options["upstream-insecure-login"])},
                               serverOptions=serverOptions, reactor=reactor)
            self.server = self.relay.server
        else:
            self.server = Server(self.local, reactor=reactor, **serverOptions)
        self.managers: list[service.IService] = []
        self.ports: list[Any] = []

    def startService(self) -> None:
        super().startService()
        self._starting = defer.ensureDeferred(self._start())
        self._starting.addErrback(self._startFailed)

    async def _start(self) -> None:
        for name, setup in zip(self.options["setup"], self.options["setupCallables"]):
            self.log.info("running setup {setup}", setup=name)
            try:
                await defer.maybeDeferred(setup, self.local)
            except Exception as e:
                raise _StartError(f"--setup {name} failed: {type(e).__name__}: {e}")
        for manager in self._lifecycleManagers():
            self.log.info("starting manager {manager!r}", manager=manager)
            manager.startService()
            self.managers.append(manager)
        if self.relay is not None:
            self.relay.client.start()
        for endpoint in self.options["listen"]:
            try:
                self.ports.append(await self.server.listen(endpoint))
            except Exception as e:
                raise _StartError(f"cannot listen on {endpoint}: {e}")
        local = sorted(self.local.managers())
        if self.relay is None:
            self.log.info("registry ready: {interfaces}", interfaces=local)
        elif not self.relay.client.connected:
            # What it relays is known once the upstream answers (the Relay
            # logs it then): no list here that would read as the answer.
            self.log.info("relay ready, waiting for upstream {upstream}"
                          + (" (serving {interfaces} of its own meanwhile)" if local
                             else ""), upstream=self.options["upstream"],
                          interfaces=local)

    def _lifecycleManagers(self) -> list[service.IService]:
        seen: list[Any] = []
        for manager in self.local.managers().values():
            if service.IService.providedBy(manager) and manager not in seen:
                seen.append(manager)
        return seen

    def _startFailed(self, failure: Any) -> None:
        problem = failure.value if failure.check(_StartError) else failure.getErrorMessage()
        if not failure.check(_StartError):
            self.log.failure("starting the registry failed", failure)
        self.log.critical("twistd registry: {problem}", problem=str(problem))
        # twistd captures sys.stderr into its log; the operator reads this line.
        (sys.__stderr__ or sys.stderr).write(f"twistd registry: {problem}\n")
        # twistd has no way to set its exit status: leave with 1 once the
        # reactor has shut down cleanly.
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        # Maybe still inside startService, before the reactor runs.
        self.reactor.callLater(0, self.reactor.stop)

    async def _stop(self) -> None:
        if self.relay is not None:
            await self.relay.stop()  # ports, client connections, then upstream
        else:
            await self.server.stop()  # ports, then every client connection
        for manager in reversed(self.managers):
            self.log.info("stopping manager {manager!r}", manager=manager)
            try:
                await defer.maybeDeferred(manager.stopService)
            except Exception:
                self.log.failure("stopping {manager!r} failed", manager=manager)
        self.managers = []
        if self.relay is not None:
            self.log.info("stopped relaying {upstream}", upstream=self.options["upstream"])
        else:
            self.log.info("registry stopped")

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return defer.ensureDeferred(self._stop())


class _StartError(Exception):
    pass


def makeService(options: Options) -> service.IService:
    return RegistryService(options)


def jsonLogger() -> Any:
    """
    For C{twistd --logger=aurora.tap.jsonLogger}: structured events as JSON
    records on standard output (read them back with
    C{twisted.logger.eventsFromJSONLogFile}).
    """
    return jsonFileLogObserver(sys.stdout)

