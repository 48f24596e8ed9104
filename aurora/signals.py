"""
The pydispatcher signals aurora sends.

Connect with ``pydispatch.dispatcher.connect(handler, signal=changed,
sender=model)``.  Senders match by identity, so connect to the very object you
hold (a model, a mirror, a client).  A failing handler is logged and does not
stop the others.
"""

from __future__ import annotations

from typing import Any

from pydispatch import robust
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.reflect import qual

changed = "aurora.changed"
"""A Model field changed: C{sender=model, name=, value=, old=}.  Sent on the
server for the Model and on every client for its mirror."""

disconnected = "aurora.disconnected"
"""A Client lost its connection: C{sender=client}.  Sent once per outage."""

connected = "aurora.connected"
"""A Client is connected and resynced: C{sender=client, registry=}."""

_log = Logger()


def send(signal: str, sender: Any, **kw: Any) -> None:
    """Send C{signal} to every receiver, logging (not raising) failures."""
    for receiver, response in robust.sendRobust(signal, sender, **kw):
        if isinstance(response, Exception):
            _log.failure(
                "{signal} handler {receiver} failed",
                failure=Failure(response, type(response), response.__traceback__),
                signal=signal,
                receiver=qual(receiver) if hasattr(receiver, "__qualname__")
                else qual(type(receiver)),
            )
