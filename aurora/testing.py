"""
Test an application against aurora in memory: a real L{Server} and real
L{Client}s connected without sockets, threads or a running reactor, time
moved by hand::

    net = MemoryNetwork()
    net.serve(registry)                     # a real Server, listening in memory
    client = net.client()                   # a real Client, connecting to it
    users = net.result(client.registry.getManager(IUserManager))
    alice = net.result(users.getUser("alice"))
    net.disconnect(); net.reconnect()       # an outage
    net.advance(1)                          # the client reconnects, on the clock

Every byte goes through aurora's own codec and brokers, as over TCP, so a
value that cannot travel fails here as it would in production.  What is
simulated is only the network (an in-memory pair of transports per
connection, built on Twisted's public C{twisted.internet.testing}) and time
(a C{MemoryReactorClock}, which is also every server's and client's reactor
and clock).  Nothing runs until the test says so: L{MemoryNetwork.flush}
delivers what was written, L{MemoryNetwork.advance} moves the clock,
L{MemoryNetwork.result} does the first until a Deferred has fired.  Plain
C{unittest} or pytest will do; no reactor needs to run.

Like C{treq.testing}, whose C{StubTreq} answers HTTP requests from a
resource in memory; unlike it, not built on C{twisted.test.iosim}, which is
Twisted's own test code.

Managers that wait for threads (C{deferToThread}, C{adbapi}) need their
blocking work done some other way here: a C{MemoryReactorClock} runs no
threads (see C{examples/test_users.py}).
"""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet import defer, error
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from aurora.client import Client
from aurora.server import Server

__all__ = ["MemoryNetwork", "NotFired", "Unsettled"]

DEFAULT_ADDRESS = "server"
"""The address L{MemoryNetwork.serve} and L{MemoryNetwork.client} use unless
told another: one server needs no name."""


class NotFired(AssertionError):
    """
    L{MemoryNetwork.result} was given a Deferred that has not fired once
    everything written has been delivered: it waits for time to pass
    (L{MemoryNetwork.advance}) or for something the test has not done.
    An C{AssertionError}, so that a test runner reports it as a failure.
    """


class Unsettled(RuntimeError):
    """
    The network did not fall quiet within L{MemoryNetwork.maxRounds} rounds
    of delivery: the two sides keep answering each other (or a timer keeps
    rescheduling itself at the same instant).
    """


class _Transport(StringTransport):
    """
    One end of an in-memory connection: what its protocol writes waits in
    the buffer until the network delivers it.  Closing is carried out by
    the network too, as a real reactor would on a later turn.
    """

    def __init__(self, host: IPv4Address, peer: IPv4Address) -> None:
        super().__init__(hostAddress=host, peerAddress=peer)
        self.protocol: IProtocol | None = None
        self.closed = False  # connectionLost was delivered to this end

    def unregisterProducer(self) -> None:
        # Twisted's real transports let this be called twice (aurora's
        # Broker.close and Client.stop both do); StringTransport raises.
        self.producer = None
        self.streaming = None

    def __repr__(self) -> str:
        host, peer = self.getHost(), self.getPeer()
        return f"<memory transport {host.host}:{host.port} -> {peer.host}:{peer.port}>"


class _Link:
    """
    A connection between a client protocol and a server protocol: two
    L{_Transport}s, and what the network does with them (deliver bytes,
    carry out closes, hold everything during a silent partition).
    """

    def __init__(self, client: _Transport, server: _Transport) -> None:
        self.ends = (client, server)

    def open(self) -> bool:
        return not all(end.closed for end in self.ends)

    def pump(self, *, silent: bool) -> bool:
        """Deliver what is buffered and carry out closes; whether anything happened."""
        moved = False
        for source, sink in (self.ends, self.ends[::-1]):
            if source.closed or silent:
                continue
            data = source.value()
            if not data:
                continue
            source.clear()
            if source.disconnected or sink.closed or sink.disconnected:
                continue  # aborted, or nobody left to read it: dropped
            moved = True
            assert sink.protocol is not None
            sink.protocol.dataReceived(data)
        for end, other in (self.ends, self.ends[::-1]):
            if end.closed or not end.disconnecting:
                continue
            if end.value() and not end.disconnected and not silent:
                continue  # loseConnection: the buffer goes first
            moved = True
            aborted = end.disconnected
            _close(end, error.ConnectionAborted() if aborted
                   else error.ConnectionDone("closed by this end"))
            if not silent and not other.closed:
                # The peer hears of it: a FIN after the data, or a reset.
                _close(other, error.ConnectionLost("reset by the peer") if aborted
                       else error.ConnectionDone("closed by the peer"))
        return moved

    def reset(self, why: str) -> None:
        """Close both ends at once, as a network failure would (a reset)."""
        for end in self.ends:
            if not end.closed:
                _close(end, error.ConnectionLost(why))


def _close(end: _Transport, reason: Exception) -> None:
    # What a real transport does when its connection ends: stop its
    # producer, then tell its protocol.
    end.closed = True
    end.connected = False
    end.disconnecting = True
    end.clear()
    producer, end.producer = end.producer, None
    if producer is not None:
        producer.stopProducing()
    if end.protocol is not None:
        end.protocol.connectionLost(Failure(reason))


@implementer(IListeningPort)
class _Port:
    """A listening address of a L{MemoryNetwork}."""

    def __init__(self, network: MemoryNetwork, address: str,
                 factory: IProtocolFactory, host: IPv4Address) -> None:
        self._network = network
        self._address = address
        self.factory = factory
        self._host = host

    def startListening(self) -> None:
        pass

    def stopListening(self) -> defer.Deferred:
        if self._network._listening.get(self._address) is self:
            del self._network._listening[self._address]
            self.factory.doStop()
        return defer.succeed(None)

    def getHost(self) -> IPv4Address:
        return self._host

    def __repr__(self) -> str:
        return f"<memory port {self._address!r}>"


@implementer(IStreamServerEndpoint)
class _ServerEndpoint:
    def __init__(self, network: MemoryNetwork, address: str) -> None:
        self._network = network
        self._address = address

    def listen(self, factory: IProtocolFactory) -> defer.Deferred:
        return defer.maybeDeferred(self._network._listen, self._address, factory)

    def __repr__(self) -> str:
        return f"memory:{self._address}"


@implementer(IStreamClientEndpoint)
class _ClientEndpoint:
    def __init__(self, network: MemoryNetwork, address: str, timeout: float) -> None:
        self._network = network
        self._address = address
        self._timeout = timeout

    def connect(self, factory: IProtocolFactory) -> defer.Deferred:
        return self._network._connect(self._address, factory, self._timeout)

    def __repr__(self) -> str:
        return f"memory:{self._address}"


class _Attempt:
    """A connection attempt, made when the network next runs."""

    def __init__(self, network: MemoryNetwork, address: str,
                 factory: IProtocolFactory) -> None:
        self.network = network
        self.address = address
        self.factory = factory
        self.timer: Any = None
        self.deferred: defer.Deferred = defer.Deferred(self._cancel)

    def _cancel(self, d: defer.Deferred) -> None:
        if self in self.network._attempts:
            self.network._attempts.remove(self)
        if self.timer is not None and self.timer.active():
            self.timer.cancel()


class MemoryNetwork:
    """
    Servers and clients connected in memory, driven by the test.

    Every L{Server} and L{Client} made here (or given this network's
    C{reactor} and endpoints) runs on one C{MemoryReactorClock}: nothing
    opens a socket or starts a thread, and nothing happens until the test
    calls L{flush}, L{advance} or L{result}.  Time starts at 0 and moves
    only by L{advance}: heartbeats, call deadlines, timeouts and the
    client's reconnect backoff all run on it, so a test of an outage takes
    no time and ends the same way every run.

    A server listens at an I{address}, a name (C{"server"} unless given);
    clients connect to a name.  Several servers (an origin and a relay) can
    share a network under different names.

    @param reactor: the reactor and clock for everything on this network
        (default: a new C{MemoryReactorClock}).  It is C{self.reactor};
        C{self.reactor.seconds()} is the time now.
    @param maxRounds: the most rounds of delivery one L{flush} makes before
        it gives up with L{Unsettled}; and, for L{advance}, the most timer
        firings it runs.
    """

    def __init__(self, *, reactor: MemoryReactorClock | None = None,
                 maxRounds: int = 100_000) -> None:
        self.reactor = reactor if reactor is not None else MemoryReactorClock()
        self.maxRounds = maxRounds
        self._listening: dict[str, _Port] = {}
        self._attempts: list[_Attempt] = []
        self._links: list[_Link] = []
        self._down = False
        self._silent = False
        self._servers: list[Server] = []
        self._clients: list[Client] = []
        self._ports = itertools.count(50_000)  # clients' addresses, for log lines
        self._serverPorts = itertools.count(8789)

    # -- making servers and clients ------------------------------------------

    def serverEndpoint(self, address: str = DEFAULT_ADDRESS) -> IStreamServerEndpoint:
        """
        An endpoint listening at C{address} on this network: for
        C{Server.listen} or C{Relay.start} when L{serve} is not enough.
        """
        return _ServerEndpoint(self, address)

    def clientEndpoint(self, address: str = DEFAULT_ADDRESS, *,
                       timeout: float = 30.0) -> IStreamClientEndpoint:
        """
        An endpoint connecting to C{address} on this network: for C{Client}
        or C{Relay} when L{client} is not enough.  An attempt is refused
        when nothing listens there or the network is L{disconnect}ed; while
        it is silently disconnected, an attempt waits, and fails with
        C{twisted.internet.error.TimeoutError} after C{timeout} seconds, as
        TCP's would.
        """
        return _ClientEndpoint(self, address, timeout)

    def serve(self, registry: Any, portal: Any = None, *,
              address: str = DEFAULT_ADDRESS, **options: Any) -> Server:
        """
        A L{Server} publishing C{registry}, listening at C{address}.

        @param options: L{Server}'s own keyword options (C{callTimeout},
            C{idleTimeout}, C{errorDetail}, ...); its reactor and clock are
            this network's.
        """
        server = Server(registry, portal, reactor=self.reactor, clock=self.reactor,
                        **options)
        self.result(server.listen(self.serverEndpoint(address)))
        self._servers.append(server)
        return server

    def client(self, credentials: Any = None, *, address: str = DEFAULT_ADDRESS,
               **options: Any) -> Client:
        """
        A L{Client} of the server at C{address}, started: it connects when
        the network next runs (C{net.result(client.getRegistry())}).

        @param options: L{Client}'s own keyword options (C{heartbeat},
            C{callTimeout}, C{reconnectDelay}, ...); its reactor and clock
            are this network's.
        """
        client = Client(self.clientEndpoint(address), credentials,
                        reactor=self.reactor, clock=self.reactor, **options)
        self._clients.append(client)
        client.start()
        return client

    # -- running it -------------------------------------------------------------

    def flush(self) -> None:
        """
        Run the network until it is quiet, without moving the clock: make
        the connections being attempted, deliver everything written (and
        whatever that provokes, answers to answers), carry out closes, and
        run the timers due now (C{callLater(0, ...)}).

        @raise Unsettled: if it is not quiet after C{maxRounds} rounds.
        """
        for _ in range(self.maxRounds):
            if not self._round():
                return
        raise Unsettled(
            f"the network still had bytes, connections or due timers to handle after "
            f"{self.maxRounds} rounds (MemoryNetwork.maxRounds): an endless exchange?")

    def _round(self) -> bool:
        moved = False
        attempts, self._attempts = self._attempts, []
        for attempt in attempts:
            moved = self._make(attempt) or moved
        for link in list(self._links):
            moved = link.pump(silent=self._silent) or moved
            if not link.open():
                self._links.remove(link)
        now = self.reactor.seconds()
        if any(call.getTime() <= now for call in self.reactor.getDelayedCalls()):
            moved = True
            self.reactor.advance(0)
        return moved

    def advance(self, seconds: float) -> None:
        """
        Move the clock C{seconds} forward, stopping at every timer due on the
        way to run it and deliver what it caused (a ping and its answer, a
        retry and its connection), as time would pass in production.

        @raise Unsettled: if more than C{maxRounds} timers are due on the way.
        """
        if seconds < 0:
            raise ValueError(f"cannot move the clock back ({seconds} s)")
        clock = self.reactor
        target = clock.seconds() + seconds
        self.flush()
        for _ in range(self.maxRounds):
            due = [c.getTime() for c in clock.getDelayedCalls() if c.getTime() <= target]
            if not due:
                break
            clock.advance(max(0.0, min(due) - clock.seconds()))
            self.flush()
        else:
            raise Unsettled(
                f"more than {self.maxRounds} timers were due within {seconds} s "
                "(MemoryNetwork.maxRounds): a timer rescheduling itself at once?")
        clock.advance(max(0.0, target - clock.seconds()))
        self.flush()

    def result(self, value: Any) -> Any:
        """
        What C{value} comes to: for a Deferred (or a coroutine), L{flush}
        until it has fired, then its result, or its exception raised here;
        anything else is returned as it is (a local manager may answer
        synchronously).  The clock does not move.

        @raise NotFired: if it has not fired once the network is quiet.
        """
        if not isinstance(value, defer.Deferred):
            if not hasattr(value, "__await__"):
                return value
            value = defer.ensureDeferred(value)
        self.flush()
        outcome: list[Any] = []
        if value.called and not value.paused:
            # Fires at once; taking the result here also consumes a failure.
            value.addBoth(outcome.append)
        if not outcome:
            raise NotFired(
                f"{value!r} has not fired and nothing is left to deliver at "
                f"{self.reactor.seconds()} s: does it wait for time to pass "
                "(MemoryNetwork.advance), for the network to come back "
                "(MemoryNetwork.reconnect), or for a thread (a password login's "
                "hashing, deferToThread, adbapi: nothing runs in threads here)?")
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        return outcome[0]

    # -- outages ------------------------------------------------------------

    def disconnect(self, *, silently: bool = False) -> None:
        """
        The network goes down until L{reconnect}.

        By default every connection is reset at once (both ends are told,
        as when a server's host restarts) and new ones are refused.  With
        C{silently}, connections stay open but carry nothing either way, and
        new ones get no answer: a partition, which only a heartbeat or an
        idle timeout notices.  An end that gives up on its connection closes
        only its own end, as the peer would not hear of it.
        """
        self._down = True
        self._silent = silently
        if not silently:
            for link in self._links:
                link.reset("the network went down (MemoryNetwork.disconnect)")
            self._links = [link for link in self._links if link.open()]
        self.flush()

    def reconnect(self) -> None:
        """
        The network is back.  Connections that survived a silent partition
        carry what was written meanwhile; one whose other end gave up is
        reset, as TCP would when its next segment arrives.  Clients
        reconnect by themselves, on the clock: L{advance} past their retry
        delay.
        """
        self._down = self._silent = False
        for link in self._links:
            if any(end.closed for end in link.ends):
                link.reset("reset by the peer (closed during the partition)")
        self.flush()

    # -- connections -------------------------------------------------------------

    def _listen(self, address: str, factory: IProtocolFactory) -> _Port:
        if address in self._listening:
            raise error.CannotListenError(None, address, "the address is in use")
        factory.doStart()
        port = self._listening[address] = _Port(
            self, address, factory, IPv4Address("TCP", "127.0.0.1", next(self._serverPorts)))
        return port

    def _connect(self, address: str, factory: IProtocolFactory,
                 timeout: float) -> defer.Deferred:
        attempt = _Attempt(self, address, factory)
        self._attempts.append(attempt)
        attempt.timer = self.reactor.callLater(timeout, self._timedOut, attempt)
        return attempt.deferred

    def _timedOut(self, attempt: _Attempt) -> None:
        if attempt in self._attempts:
            self._attempts.remove(attempt)
        if not attempt.deferred.called:
            attempt.deferred.errback(error.TimeoutError(
                string=f"no answer from memory:{attempt.address}"))

    def _make(self, attempt: _Attempt) -> bool:
        """
        Carry out a connection attempt, or refuse it; during a partition,
        keep it for later.  Whether anything happened.
        """
        if attempt.deferred.called:
            return False
        if self._down and self._silent:
            self._attempts.append(attempt)  # no answer yet: made once healed
            return False
        attempt.timer.cancel()
        port = self._listening.get(attempt.address)
        if self._down or port is None:
            why = "the network is down" if self._down else "nothing listens there"
            attempt.deferred.errback(error.ConnectionRefusedError(
                f"memory:{attempt.address}: {why}"))
            return True
        clientAddress = IPv4Address("TCP", "127.0.0.1", next(self._ports))
        serverAddress = port.getHost()
        try:
            clientProtocol = attempt.factory.buildProtocol(serverAddress)
        except BaseException:
            attempt.deferred.errback()
            return True
        if clientProtocol is None:
            attempt.deferred.errback(error.ConnectError(
                string=f"memory:{attempt.address}: the client factory built no protocol"))
            return True
        clientEnd = _Transport(clientAddress, serverAddress)
        serverEnd = _Transport(serverAddress, clientAddress)
        serverProtocol = port.factory.buildProtocol(clientAddress)
        if serverProtocol is None:
            # Refused by the server's factory: accepted, then closed at once.
            serverProtocol = Protocol()
            serverEnd.loseConnection()
        self._links.append(_Link(clientEnd, serverEnd))
        serverEnd.protocol, clientEnd.protocol = serverProtocol, clientProtocol
        serverProtocol.makeConnection(serverEnd)
        clientProtocol.makeConnection(clientEnd)
        attempt.deferred.callback(clientProtocol)
        return True

    # -- the end -------------------------------------------------------------------

    def stop(self) -> None:
        """
        Stop every client, then every server, made by L{client} and L{serve},
        delivering what they say on the way out: a test's cleanup.
        """
        clients, self._clients = self._clients, []
        servers, self._servers = self._servers, []
        self.result(defer.gatherResults([c.stop() for c in clients], consumeErrors=True))
        self.result(defer.gatherResults([s.stop() for s in servers], consumeErrors=True))
