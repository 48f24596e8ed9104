"""
The fence: every use of a Twisted name that is not public API.

aurora speaks PB's wire format on Twisted's own C{pb.Broker}, and a few of
the steps it must change are private methods there (how a call is received,
how a call and an answer are sent); its socket writes and its reconnecting
service reach into transport and service internals likewise.  They are all
here, under names aurora owns, so that a Twisted release that moves one
breaks this module and its tests, not the package
(C{tests/test_fence.py} scans the rest of C{aurora/} for any other use).
The supported Twisted range is in C{pyproject.toml}; CI runs the suite on
its oldest and newest release.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.internet import ClientService
from twisted.internet import tcp
from twisted.logger import ILogObserver, Logger
from twisted.spread import pb


class PBBroker(pb.Broker):
    """
    C{pb.Broker} with its private receive and answer steps under public
    names: a subclass overrides L{receiveMessage} and L{writeAnswer}, and
    calls L{writeError} and L{writeFailureOrError}.
    """

    # PB calls these (private) methods; each hands over to aurora's name.
    def _recvMessage(self, findObjMethod: Callable[[Any], Any], requestID: Any,
                     objectID: Any, message: Any, answerRequired: Any,
                     netArgs: Any, netKw: Any) -> None:
        self.receiveMessage(findObjMethod, requestID, objectID, message,
                            answerRequired, netArgs, netKw)

    def _sendAnswer(self, netResult: Any, requestID: int) -> None:
        self.writeAnswer(netResult, requestID)

    # What they do in stock PB, for a subclass to extend.
    def receiveMessage(self, findObjMethod: Callable[[Any], Any], requestID: Any,
                       objectID: Any, message: Any, answerRequired: Any,
                       netArgs: Any, netKw: Any) -> None:
        """A call from the peer: find the object, call it, answer."""
        pb.Broker._recvMessage(self, findObjMethod, requestID, objectID, message,
                               answerRequired, netArgs, netKw)

    def writeAnswer(self, netResult: Any, requestID: int) -> None:
        """Send the answer to the peer's call C{requestID}."""
        pb.Broker._sendAnswer(self, netResult, requestID)

    def writeError(self, fail: Any, requestID: int) -> None:
        """Send C{fail} (an exception or Failure PB can copy) as the error answer."""
        pb.Broker._sendError(self, fail, requestID)

    def writeFailureOrError(self, fail: Any, requestID: int) -> None:
        """Send a call's failure as its error answer, as stock PB would."""
        pb.Broker._sendFailureOrError(self, fail, requestID)


def canWriteDirectly(transport: Any) -> bool:
    """
    Whether C{transport} is a plain TCP socket that L{writeNow} can write to
    (not TLS, not in memory, and a Twisted whose TCP transport has the
    buffers L{writeNow} checks).
    """
    return isinstance(transport, tcp.Connection) and \
        hasattr(transport, "_tempDataBuffer") and hasattr(transport, "dataBuffer")


def writeNow(transport: Any, data: bytes) -> bytes:
    """
    Hand C{data} to the kernel now if nothing is waiting before it in
    C{transport}'s own buffers; what is left for C{transport.write}.

    Twisted's write only buffers: the bytes go out on the next reactor turn,
    after two epoll_ctl calls to watch for writability.  Only when nothing
    is queued ahead may they skip that queue (the order of bytes is kept).
    """
    t = transport
    if t.connected and not t.disconnecting and not getattr(t, "_aborting", False) \
            and not t._tempDataBuffer and len(t.dataBuffer) == t.offset:
        sent = t.writeSomeData(data)
        if isinstance(sent, int):
            return data[sent:]
    return data


def protocolOf(connected: Any) -> Any:
    """
    The protocol a C{ClientService} connected: its C{prepareConnection} gets
    a proxy in front of it.
    """
    return getattr(connected, "_protocol", connected)


def quietClientService(observer: ILogObserver) -> type[ClientService]:
    """
    A C{ClientService} class whose own log events go to C{observer} (it
    hands its class logger to its state machine, which has no other seam).
    """

    class _Service(ClientService):
        _log = Logger(observer=observer)

    return _Service
