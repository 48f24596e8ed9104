"""
Who may connect, and which interfaces each identity may use.

PB's own login is an MD5 challenge that needs every password in plaintext
on the server (Twisted #4398); aurora does not use it.  A client sends its
password once, over TLS (the server refuses it on a plain connection unless
told otherwise, for development), and the server checks it against a salted
scrypt hash.  Or the client certificate of a mutual-TLS connection is the
identity.  Either way C{twisted.cred} decides: a C{Portal} whose realm hands
out an L{Identity}, the interfaces it may use.

The password file, one user a line (see L{hashPassword}, L{setPassword})::

    alice:scrypt$16384$8$1$<salt>$<hash>:*
    bob:scrypt$16384$8$1$<salt>$<hash>:myapp.IUserManager,myapp.IPresence
    relay.example.org:-:*            # certificate only: no password

The last field lists the interfaces the user may use (``*``: all).

A L{aurora.Server} checks logins through an L{Authenticator}: scrypt in a
small bounded thread pool (never on the reactor thread), exactly one hash per
password attempt whoever the user, and failed attempts answered later and
later (per connection and per source address, capped, never a lockout).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import math
import os
import secrets
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from zope.interface import Attribute, Interface, implementer

from aurora._quiet import LogLimiter
from aurora.errors import LimitExceeded, LoginFailed

_N, _R, _P = 2**14, 8, 1  # scrypt cost: ~16 MiB and tens of ms per check


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# What an attempt for an unknown (or certificate-only) user is checked
# against: the same scrypt parameters as a real hash, so it costs the same,
# and a random digest that no password matches.  Made once, at import; it
# costs nothing, since no password is hashed to make it.
_DUMMY_HASH = (f"scrypt${_N}${_R}${_P}${_b64(secrets.token_bytes(16))}$"
               f"{_b64(secrets.token_bytes(32))}")


def hashPassword(password: str | bytes, *, salt: bytes | None = None) -> str:
    """A salted scrypt hash of C{password}, for the password file."""
    if isinstance(password, str):
        password = password.encode("utf-8")
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password, salt=salt, n=_N, r=_R, p=_P, dklen=32)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(digest)}"


def _parse(stored: str) -> tuple[bytes, int, int, int, bytes]:
    scheme, n, r, p, salt, digest = stored.split("$")
    if scheme != "scrypt":
        raise ValueError(f"not an scrypt hash: {scheme!r}")
    return base64.b64decode(salt), int(n), int(r), int(p), base64.b64decode(digest)


def checkPassword(password: bytes, stored: str) -> bool:
    """
    Whether C{password} matches C{stored} (a L{hashPassword} result), in
    constant time.  Exactly one scrypt, always: a C{stored} that is not a
    valid hash costs the same as one and matches nothing.
    """
    try:
        salt, n, r, p, expected = _parse(stored)
        valid = True
    except (ValueError, TypeError):
        salt, n, r, p, expected = _parse(_DUMMY_HASH)
        valid = False
    try:
        got = hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=len(expected))
    except (ValueError, TypeError):
        return False  # parameters scrypt refuses (or too much memory)
    return hmac.compare_digest(got, expected) and valid


@dataclass
class Entry:
    name: str
    hash: str | None  # None: certificate only
    interfaces: frozenset[str] | None  # None: all


def readPasswordFile(path: str) -> dict[str, Entry]:
    entries = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split(":")
            if len(parts) != 3 or not parts[0]:
                raise ValueError(f"{path}:{number}: expected NAME:HASH:INTERFACES")
            name, hashed, ifaces = parts
            entries[name] = Entry(
                name, None if hashed == "-" else hashed,
                None if ifaces.strip() == "*" else frozenset(
                    i.strip() for i in ifaces.split(",") if i.strip()))
    return entries


def setPassword(path: str, name: str, password: str | None,
                interfaces: list[str] | None = None) -> None:
    """Add or replace C{name} in the password file (created if missing)."""
    if ":" in name or "\n" in name or not name:
        raise ValueError(f"bad user name {name!r}")
    lines = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            lines = [ln for ln in f.read().splitlines()
                     if ln.split(":", 1)[0].strip() != name]
    hashed = hashPassword(password) if password is not None else "-"
    lines.append(f"{name}:{hashed}:{'*' if interfaces is None else ','.join(interfaces)}")
    fd = os.open(path + ".new", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(path + ".new", path)


# Interface again, redundantly: pydoctor reads only aurora's source, and
# knows a class for an interface only by a base it can see.
class IPeerCertificate(credentials.ICredentials, Interface):
    """The verified client certificate of a mutual-TLS connection."""

    commonName = Attribute("The certificate's subject common name (str).")


@implementer(IPeerCertificate)
@dataclass
class PeerCertificate:
    commonName: str


@implementer(ICredentialsChecker)
class PasswordFile:
    """
    Checks user names and passwords (and certificate names) against a
    password file, re-read when it changes.

    Every password attempt costs exactly one scrypt with the same
    parameters, whoever the user (unknown and certificate-only users are
    checked against a dummy hash).  Credentials from an L{Authenticator}
    are hashed in its thread pool; plain C{UsernamePassword} credentials
    here, on the calling thread.
    """

    credentialInterfaces = (credentials.IUsernamePassword, IPeerCertificate)

    def __init__(self, path: str) -> None:
        self.path = path
        self._mtime: float | None = None
        self._entries: dict[str, Entry] = {}
        self.entries()  # a bad file fails now, not at the first login

    def entries(self) -> dict[str, Entry]:
        mtime = os.stat(self.path).st_mtime
        if mtime != self._mtime:
            self._entries, self._mtime = readPasswordFile(self.path), mtime
        return self._entries

    def requestAvatarId(self, creds: Any) -> defer.Deferred:
        entries = self.entries()
        if IPeerCertificate.providedBy(creds):
            if creds.commonName in entries:
                return defer.succeed(creds.commonName)
            return defer.fail(error.UnauthorizedLogin())
        name = creds.username.decode("utf-8", "replace")
        entry = entries.get(name)
        # One hash, with the same parameters, whoever the user: an unknown or
        # certificate-only user's attempt is checked against a dummy hash,
        # so the time taken does not tell whether the name exists.
        own = entry.hash if entry is not None else None
        known = own is not None
        stored = own if own is not None else _DUMMY_HASH
        check = getattr(creds, "checkHashed", None)  # an Authenticator's pool
        if check is not None:
            checked = check(stored)
        else:
            checked = defer.maybeDeferred(checkPassword, creds.password, stored)

        def decided(ok: bool) -> str:
            if ok and known:
                return name
            raise error.UnauthorizedLogin()

        return checked.addCallback(decided)


class IIdentity(Interface):
    """What the realm hands out: who logged in and what they may use."""


@implementer(IIdentity)
@dataclass(frozen=True)
class Identity:
    name: str | None  # None: anonymous
    interfaces: frozenset[str] | None  # None: all


ANONYMOUS_ALL = Identity(None, None)


@implementer(IRealm)
class Realm:
    """
    Identities with their interfaces: C{access} maps a name to the dotted
    interface names it may use (or None for all).  Without an entry, a
    L{PasswordFile}'s own list applies; anonymous users get C{anonymous}.
    """

    def __init__(self, access: dict[str, Any] | None = None, *,
                 passwords: PasswordFile | None = None,
                 anonymous: frozenset[str] | None = None) -> None:
        self.access = access or {}
        self.passwords = passwords
        self.anonymous = anonymous

    def _interfaces(self, avatarId: Any) -> frozenset[str] | None:
        if avatarId is None or avatarId is credentials.IAnonymous:
            return self.anonymous
        if avatarId in self.access:
            allowed = self.access[avatarId]
            return None if allowed is None else frozenset(allowed)
        if self.passwords is not None and avatarId in self.passwords.entries():
            return self.passwords.entries()[avatarId].interfaces
        return frozenset()

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any) -> Any:
        if IIdentity not in interfaces:
            raise NotImplementedError("aurora's realm hands out IIdentity only")
        anonymous = avatarId is None or not isinstance(avatarId, str)
        name = None if anonymous else avatarId
        return IIdentity, Identity(name, self._interfaces(None if anonymous else avatarId)), \
            lambda: None


def portal(passwordFile: str | None = None, *, anonymous: bool = False,
           anonymousInterfaces: list[str] | None = None,
           access: dict[str, Any] | None = None) -> Portal:
    """
    A portal for L{aurora.Server}: users from C{passwordFile} (passwords
    and certificate names), and anonymous users if C{anonymous} (limited to
    C{anonymousInterfaces} if given).
    """
    from twisted.cred.checkers import AllowAnonymousAccess

    checkers: list[Any] = []
    passwords = PasswordFile(passwordFile) if passwordFile else None
    if passwords is not None:
        checkers.append(passwords)
    if anonymous:
        checkers.append(AllowAnonymousAccess())
    realm = Realm(access, passwords=passwords,
                  anonymous=None if anonymousInterfaces is None
                  else frozenset(anonymousInterfaces))
    return Portal(realm, checkers)


class _Busy(Exception):
    """The hashing pool and its queue are full."""


@implementer(credentials.IUsernamePassword)
class _PooledPassword(credentials.UsernamePassword):
    """
    A user name and password whose hash an L{Authenticator} checks (in its
    thread pool, with its C{check}): L{PasswordFile} calls C{checkHashed}
    with the stored hash.  Other checkers see ordinary
    C{UsernamePassword} credentials.
    """

    def __init__(self, username: bytes, password: bytes,
                 checkHashed: Callable[[bytes, str], defer.Deferred]) -> None:
        super().__init__(username, password)
        self._checkHashed = checkHashed

    def checkHashed(self, stored: str) -> defer.Deferred:
        """A Deferred firing with whether the password matches C{stored}."""
        return self._checkHashed(self.password, stored)


def _addressKey(host: str) -> str:
    """
    What failures are counted under: the IPv4 address, or the /64 network
    of an IPv6 address (one host usually has a whole /64); anything else
    (a unix socket) as it is.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class Throttle:
    """
    How long the answer to a failed login is held back: never a lockout, a
    delay that grows with recent failures and is capped.

    Failures are counted per connection (reset by a successful login on it)
    and per source address (forgotten one every C{decay} seconds, never
    reset by a success: an attacker's own account must not wipe the slate).
    After C{n} failures the delay is C{firstDelay * 2 ** (n - 1)}, at most
    C{maxDelay}; the larger of the two counts decides.  Relays and NAT put
    many users behind one address, so an address is only ever slowed down,
    and only its failures are: a right password is answered at once.

    @param clock: what tells the time and schedules (an C{IReactorTime}).
    @param firstDelay: the delay after one failure (0.25 s; 0: none).
    @param maxDelay: the longest delay (2 s).
    @param decay: seconds after which one failure of an address is
        forgotten (10 s): a flood stops being slowed down within
        C{decay} seconds per failure it is charged (at most enough failures
        to reach C{maxDelay}, 4 by default, so at most 40 s).
    @param maxAddresses: addresses remembered at once (10,000); past that
        the one whose last failure is oldest is forgotten.
    """

    def __init__(self, clock: Any, *, firstDelay: float = 0.25, maxDelay: float = 2.0,
                 decay: float = 10.0, maxAddresses: int = 10_000) -> None:
        if firstDelay < 0 or maxDelay < firstDelay or decay <= 0 or maxAddresses < 1:
            raise ValueError("Throttle needs 0 <= firstDelay <= maxDelay, decay > 0 "
                             "and maxAddresses >= 1")
        self.clock = clock
        self.firstDelay = firstDelay
        self.maxDelay = maxDelay
        self.decay = decay
        self.maxAddresses = maxAddresses
        # Failures past this many change nothing: the delay is at its cap.
        self.maxFailures = 1 + (math.ceil(math.log2(maxDelay / firstDelay))
                                if firstDelay > 0 else 0)
        # address key -> [failures, when counted], oldest first
        self._addresses: OrderedDict[str, list[float]] = OrderedDict()

    def delayAfter(self, failures: float) -> float:
        """The delay after C{failures} failures (0 for none)."""
        if failures <= 0 or self.firstDelay <= 0:
            return 0.0
        failures = min(failures, self.maxFailures)
        return min(self.maxDelay, self.firstDelay * 2 ** (failures - 1))

    def addressFailures(self, host: str) -> float:
        """The failures still remembered for C{host}'s address (fractional)."""
        entry = self._addresses.get(_addressKey(host))
        if entry is None:
            return 0.0
        failures, when = entry
        return max(0.0, failures - (self.clock.seconds() - when) / self.decay)

    def failed(self, connectionFailures: int, host: str) -> float:
        """
        Count a failure from C{host}; C{connectionFailures} is the count on
        its connection, this one included.  The delay to hold its answer.
        """
        key = _addressKey(host)
        failures = min(self.addressFailures(host) + 1, self.maxFailures)
        self._addresses[key] = [failures, self.clock.seconds()]
        self._addresses.move_to_end(key)
        while len(self._addresses) > self.maxAddresses:
            self._addresses.popitem(last=False)
        return max(self.delayAfter(connectionFailures), self.delayAfter(failures))

    def __len__(self) -> int:
        return len(self._addresses)


class _Connection:
    """One connection's login state."""

    failures = 0  # since its last successful login
    attempting = False  # an attempt is being checked or its answer held


class Authenticator:
    """
    Checks logins for a L{aurora.Server} so that guessing passwords costs
    the guesser, not the server, and tells nothing about which users exist.

      - B{Hashing off the reactor thread, bounded.}  scrypt (tens of ms,
        16 MiB, and it releases the GIL) runs in a thread pool of
        C{threads} threads (2) of this authenticator's own, started at the
        first password attempt and stopped by L{stop} (and at reactor
        shutdown).  At most C{maxWaiting} attempts (64) wait for a thread;
        one more is refused at once with L{LoginFailed} saying the server is
        busy, without being hashed.
      - B{One hash per attempt, whoever the user.}  Unknown user,
        certificate-only user, wrong password, right password: each attempt
        costs exactly one scrypt with the same parameters (an unknown user's
        is checked against a dummy hash), so the time taken does not say
        whether a name exists.  (This holds for users of a L{PasswordFile};
        another checker in the portal hashes as it likes, on the reactor
        thread.)
      - B{Failures slowed down, never locked out.}  The answer to a failed
        attempt is held back by a delay from a L{Throttle}: per connection
        and per source address, doubling from C{firstDelay} (0.25 s) up to
        C{maxDelay} (2 s), forgotten one failure every C{decay} seconds
        (10 s) per address and at a successful login per connection; at
        most C{maxAddresses} addresses (10,000) are remembered, the one
        whose last failure is oldest forgotten first.  Each connection has
        one attempt at a time: another sent before the first is answered is
        refused at once, unhashed, so pipelining gains nothing.
      - B{Failures logged with the peer}, at most one line per source
        address per C{logInterval} seconds (60; see L{LogLimiter}), never a
        traceback.

    @param portal: the C{twisted.cred} portal that decides (see L{portal}).
    @param reactor: runs the pool's results back on the reactor thread
        (default: the global reactor).
    @param clock: times the delays and the log limit (default: C{reactor}).
    @param check: the function that hashes, C{check(password, stored) ->
        bool}, run in the pool (default L{checkPassword}); also the
        attribute C{check}, replaceable (a test counts hashes with it).
    @param log: where refusals are logged (default: namespace
        C{aurora.auth}).
    """

    def __init__(self, portal: Any, *, reactor: Any = None, clock: Any = None,
                 threads: int = 2, maxWaiting: int = 64,
                 firstDelay: float = 0.25, maxDelay: float = 2.0,
                 decay: float = 10.0, maxAddresses: int = 10_000,
                 check: Callable[[bytes, str], bool] = checkPassword,
                 log: Logger | None = None, logInterval: float = 60.0) -> None:
        if threads < 1 or maxWaiting < 0:
            raise ValueError("Authenticator needs threads >= 1 and maxWaiting >= 0")
        if reactor is None:
            from twisted.internet import reactor
        self.portal = portal
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.threads = threads
        self.maxWaiting = maxWaiting
        self.check = check
        self.throttle = Throttle(self.clock, firstDelay=firstDelay, maxDelay=maxDelay,
                                 decay=decay, maxAddresses=maxAddresses)
        self.log = LogLimiter(log if log is not None else Logger(namespace="aurora.auth"),
                              self.clock, interval=logInterval)
        self._connections: weakref.WeakKeyDictionary[Any, _Connection] = \
            weakref.WeakKeyDictionary()
        self._pool: ThreadPool | None = None
        self._shutdownTrigger: Any = None
        self._hashing: set[defer.Deferred] = set()  # submitted, not yet done
        self._held: dict[defer.Deferred, Any] = {}  # answers held back -> timer
        self._stopped = False

    @property
    def hashing(self) -> int:
        """Password attempts in the pool now: being hashed or waiting."""
        return len(self._hashing)

    # -- the pool ---------------------------------------------------------------

    def _startPool(self) -> ThreadPool:
        if self._pool is None:
            self._pool = ThreadPool(0, self.threads, name="aurora-login")
            self._pool.start()
            self._shutdownTrigger = self.reactor.addSystemEventTrigger(
                "during", "shutdown", self.stop)
        return self._pool

    def _hash(self, password: bytes, stored: str) -> defer.Deferred:
        """C{self.check(password, stored)} in the pool, or L{_Busy} at once."""
        if self._stopped:
            return defer.fail(LoginFailed("the server is stopping"))
        if len(self._hashing) >= self.threads + self.maxWaiting:
            return defer.fail(_Busy())
        d: defer.Deferred = defer.Deferred()
        self._hashing.add(d)

        def finished(success: bool, result: Any) -> None:  # on the reactor thread
            if d.called:
                return  # failed by stop()
            self._hashing.discard(d)
            if success:
                d.callback(result)
            else:
                d.errback(Failure(result))

        self._startPool().callInThreadWithCallback(
            lambda success, result: self.reactor.callFromThread(finished, success, result),
            self.check, password, stored)
        return d

    def stop(self) -> None:
        """
        Stop the pool (waiting for a hash in progress) and answer at once
        what is held back; attempts still waiting for a thread fail.  The
        next attempt starts a new pool.
        """
        pool, self._pool = self._pool, None
        if self._shutdownTrigger is not None:
            trigger, self._shutdownTrigger = self._shutdownTrigger, None
            try:
                self.reactor.removeSystemEventTrigger(trigger)
            except (ValueError, KeyError):
                pass  # firing now: stop() was called by it
        self._stopped = True
        try:
            if pool is not None:
                pool.stop()
            for d in list(self._hashing):
                self._hashing.discard(d)
                d.errback(LoginFailed("the server is stopping"))
            for d, timer in list(self._held.items()):
                if timer.active():
                    timer.cancel()
                d.callback(None)
        finally:
            self._stopped = False
            self._held.clear()

    # -- logging in ---------------------------------------------------------------

    def login(self, creds: Any, *, connection: Any, address: str,
              peer: str | None = None) -> defer.Deferred:
        """
        A Deferred firing with the L{Identity} for C{creds} (as given to a
        portal: C{UsernamePassword}, L{PeerCertificate}, C{Anonymous}), or
        failing with L{LoginFailed}.

        @param connection: what stands for the connection (weakly referenced;
            the server's broker): its failures and its one attempt at a time.
        @param address: the peer's host, what failures are counted under.
        @param peer: the peer as logged (default: C{address}).
        """
        return defer.ensureDeferred(self._login(creds, connection, address,
                                                peer if peer is not None else address))

    async def _login(self, creds: Any, connection: Any, address: str, peer: str) -> Any:
        state = self._connections.get(connection)
        if state is None:
            state = self._connections[connection] = _Connection()
        if state.attempting:
            raise LoginFailed("a login attempt is already in progress on this "
                              "connection: wait for its answer")
        state.attempting = True
        try:
            return await self._attempt(creds, state, address, peer)
        finally:
            state.attempting = False

    async def _attempt(self, creds: Any, state: _Connection, address: str,
                       peer: str) -> Any:
        who = _describe(creds)
        if credentials.IUsernamePassword.providedBy(creds):
            creds = _PooledPassword(creds.username, creds.password, self._hash)
        try:
            _, identity, _ = await self.portal.login(creds, None, IIdentity)
        except _Busy:
            self.log.warn(("login busy",), "login refused for {who} from {peer}: the "
                          "server is busy checking {count} other logins", who=who,
                          peer=peer, count=len(self._hashing))
            # Not LoginFailed: nothing is wrong with the credentials, and a
            # Client retries this (with backoff) where it gives up on that.
            raise LimitExceeded(
                "the server is busy checking other logins; try again shortly",
                limit=self.threads + self.maxWaiting) from None
        except (error.UnauthorizedLogin, error.UnhandledCredentials):
            state.failures = min(state.failures + 1, self.throttle.maxFailures)
            delay = self.throttle.failed(state.failures, address)
            self.log.warn(("login refused", _addressKey(address)),
                          "login refused for {who} from {peer} (answered after "
                          "{delay:.2f} s)", who=who, peer=peer, delay=delay)
            await self._holdBack(delay)
            if isinstance(creds, credentials.Anonymous):
                raise LoginFailed("this server does not allow anonymous access: "
                                  "log in with credentials") from None
            # The same words for an unknown user and a wrong password.
            raise LoginFailed(f"login refused for {who}: unknown, or the wrong "
                              "password") from None
        state.failures = 0
        return identity

    async def _holdBack(self, delay: float) -> None:
        if delay <= 0 or self._stopped:
            return
        d: defer.Deferred = defer.Deferred()
        self._held[d] = self.clock.callLater(delay, d.callback, None)
        try:
            await d
        finally:
            self._held.pop(d, None)


def _describe(creds: Any) -> str:
    """Who tried, for the log and the refusal: one line, a bounded length."""

    def short(name: str) -> str:
        return repr(name if len(name) <= 100 else name[:100] + "...")

    if credentials.IUsernamePassword.providedBy(creds):
        return f"user {short(creds.username.decode('utf-8', 'replace'))}"
    if IPeerCertificate.providedBy(creds):
        return f"certificate {short(creds.commonName)}"
    return "anonymous access"


def mutualTLSEndpoint(reactor: Any, port: str, privateKey: str, certKey: str,
                      caCerts: str, interface: str = "", backlog: str = "50") -> Any:
    """
    A TLS server endpoint that requires a client certificate signed by the
    CA in C{caCerts}: Twisted's C{ssl:} string cannot say that.  As a string
    (the C{mtls:} endpoint plugin)::

        mtls:8790:privateKey=key.pem:certKey=cert.pem:caCerts=ca.pem:interface=0.0.0.0
    """
    from twisted.internet import ssl
    from twisted.internet.endpoints import SSL4ServerEndpoint

    def read(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    me = ssl.PrivateCertificate.loadPEM(read(certKey) + b"\n" + read(privateKey))
    authority = ssl.Certificate.loadPEM(read(caCerts))
    return SSL4ServerEndpoint(reactor, int(port), me.options(authority),
                              backlog=int(backlog), interface=interface)
