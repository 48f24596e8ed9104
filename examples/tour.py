"""
A five-minute tour: start the example server in its own process, connect a
client, fetch and add users, and watch a user's presence change live.

    python examples/tour.py
"""

from __future__ import annotations

import os
import sys

from pydispatch import dispatcher
from twisted.internet import defer, protocol, task

from aurora import Client, signals
from users import IUserManager, UnknownUser, User

HERE = os.path.dirname(os.path.abspath(__file__))


class ServerProcess(protocol.ProcessProtocol):
    """The example server; C{ready} fires with its port."""

    def __init__(self) -> None:
        self.ready: defer.Deferred = defer.Deferred()
        self.ended: defer.Deferred = defer.Deferred()
        self.output = b""
        self.errors = b""

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if not self.ready.called and b"listening on " in self.output:
            line = self.output.split(b"listening on ", 1)[1].split(b"\n", 1)[0]
            self.ready.callback(int(line))

    def errReceived(self, data: bytes) -> None:
        self.errors += data  # the server's log; shown only if it fails to start

    def processEnded(self, reason) -> None:
        if not self.ready.called:
            sys.stderr.write(self.errors.decode("utf-8", "replace"))
            self.ready.errback(reason)
        self.ended.callback(None)


async def tour(reactor) -> None:
    server = ServerProcess()
    reactor.spawnProcess(
        server, sys.executable,
        [sys.executable, os.path.join(HERE, "server.py"), "tcp:0:interface=127.0.0.1"],
        env=os.environ.copy(), path=HERE,
    )
    port = await server.ready.addTimeout(30, reactor)
    print(f"1. the example server runs in process {server.transport.pid}, port {port}")

    client = Client(f"tcp:127.0.0.1:{port}")
    try:
        registry = await client.getRegistry()
        print(f"2. it offers {await registry.interfaces()}")

        users = await registry.getManager(IUserManager)
        print(f"3. the manager wrapper provides IUserManager: "
              f"{IUserManager.providedBy(users)}")

        alice = await users.getUser("alice")
        print(f"4. a copy arrives as its own class: {alice!r} "
              f"(isinstance User: {isinstance(alice, User)})")

        await users.addUser(User(name="carol", email="carol@example.org"))
        print(f"5. a copy travels the other way too: "
              f"{[u.name for u in await users.listUsers()]}")

        presence = await users.getModel("alice")
        seen: defer.Deferred = defer.Deferred()

        def changed(sender, name, value, old):
            print(f"7. changed signal on the mirror: {name} {old!r} -> {value!r}")
            if not seen.called:
                seen.callback(None)

        dispatcher.connect(changed, signal=signals.changed, sender=presence, weak=False)
        print(f"6. a live model mirror: {presence!r}; asking the server to change it")
        await users.setOnline("alice", True)
        await seen.addTimeout(10, reactor)
        print(f"8. the mirror now reads online={presence.online}")

        try:
            await users.getUser("nobody")
        except UnknownUser as e:
            print(f"9. errors arrive as their class: UnknownUser({e})")
    finally:
        await client.stop()
        server.transport.signalProcess("TERM")
        await server.ended
    print("done: server stopped")


if __name__ == "__main__":
    task.react(lambda reactor: defer.ensureDeferred(tour(reactor)))
