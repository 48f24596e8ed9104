"""
Who may connect, and which interfaces each identity may use.

PB's own login is an MD5 challenge that needs every password in plaintext
on the server (Twisted #4398); aurora does not use it.  A client sends its
password once, over TLS (the server refuses it on a plain connection unless
told otherwise, for development), and the server checks it against a salted
scrypt hash.  Or the client certificate of a mutual-TLS connection is the
identity.  Either way C{twisted.cred} decides: a L{Portal} whose realm hands
out an L{Identity}, the interfaces it may use.

The password file, one user a line (see L{hashPassword}, L{setPassword})::

    alice:scrypt$16384$8$1$<salt>$<hash>:*
    bob:scrypt$16384$8$1$<salt>$<hash>:myapp.IUserManager,myapp.IPresence
    relay.example.org:-:*            # certificate only: no password

The last field lists the interfaces the user may use (``*``: all).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from typing import Any

from twisted.cred import credentials, error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer
from zope.interface import Attribute, Interface, implementer

_N, _R, _P = 2**14, 8, 1  # scrypt cost: ~16 MiB and tens of ms per check


def hashPassword(password: str | bytes, *, salt: bytes | None = None) -> str:
    """A salted scrypt hash of C{password}, for the password file."""
    if isinstance(password, str):
        password = password.encode("utf-8")
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password, salt=salt, n=_N, r=_R, p=_P, dklen=32)
    encode = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    return f"scrypt${_N}${_R}${_P}${encode(salt)}${encode(digest)}"


def checkPassword(password: bytes, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password, salt=base64.b64decode(salt), n=int(n),
                             r=int(r), p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


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


class IPeerCertificate(credentials.ICredentials):
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
        # Hash even for an unknown user, so the time taken does not tell.
        stored = entry.hash if entry is not None and entry.hash else hashPassword(b"x")
        if checkPassword(creds.password, stored) and entry is not None and entry.hash:
            return defer.succeed(name)
        return defer.fail(error.UnauthorizedLogin())


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
