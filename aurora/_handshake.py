"""
The handshake: which aurora protocol a peer speaks (exchanged by C{hello} at
connect, see L{checkVersion}), and what a connection that never got through
PB's own handshake was (L{_whyNotReady}).
"""

from __future__ import annotations

from typing import Any

from aurora._version import __version__
from aurora.errors import IncompatibleVersion, _safeText

PROTOCOL_VERSION = 2
"""aurora's wire protocol version, exchanged by C{hello} at connect.  2: a
connection's limits are raised at login, for the identity, never by C{hello}."""


def versionInfo() -> dict[str, Any]:
    """What this side says of itself in C{hello}."""
    return {"protocol": PROTOCOL_VERSION, "aurora": __version__}


def checkVersion(peer: Any, side: str) -> None:
    """Raise L{IncompatibleVersion} unless C{peer} speaks our protocol."""
    theirs = peer.get("protocol") if isinstance(peer, dict) else None
    if theirs != PROTOCOL_VERSION:
        release = peer.get("aurora", "?") if isinstance(peer, dict) else "?"
        raise IncompatibleVersion(
            f"the {side} speaks aurora protocol {theirs!r} (aurora {release}); "
            f"this process speaks protocol {PROTOCOL_VERSION} "
            f"(aurora {__version__})",
            local=PROTOCOL_VERSION,
            remote=theirs if isinstance(theirs, int) else None,
        )


def _whyNotReady(reason: Any, firstBytes: bytes) -> str:
    """What a connection that never got through PB's handshake was, in words."""
    value = getattr(reason, "value", None)
    module = type(value).__module__ or ""
    if module.startswith("OpenSSL"):
        text = _safeText(value, 200)
        if "certificate verify failed" in text:
            return ("TLS failed: the server's certificate is not trusted (certificate "
                    "verify failed); give the client its CA with trustRoots=DIR")
        return f"TLS failed ({text})"
    if firstBytes[:1] in (b"\x15", b"\x16") and firstBytes[1:2] == b"\x03":
        return "the server speaks TLS and this connection does not: connect with tls:"
    if firstBytes:
        return (f"the peer is not an aurora server: it sent "
                f"{_safeText(repr(firstBytes[:16]), 60)}")
    return ("the peer closed it before PB's handshake (not an aurora server, or a TLS "
            "port reached with plain TCP?)")
