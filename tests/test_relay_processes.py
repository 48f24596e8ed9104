"""
Chains with every hop in its own process; relays that have never imported
the application; killing and restarting the middle relay and the origin.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from aurora import Client, errors, signals
from tests.app import IUserManager, NotAllowed, User, UserModel
from tests.helpers import RelayProcess, ServerProcess, SignalLog

FAST = ["--heartbeat", "0.5"]
CLIENT = dict(heartbeat=0.5, reconnectDelay=0.05, maxReconnectDelay=0.2)


class ProcessChain:
    async def start(self, hops: int, tmp_path) -> None:
        self.origin = await ServerProcess.start()
        self.relays: list[RelayProcess] = []
        port = self.origin.port
        for _ in range(hops):
            relay = await RelayProcess.start(port, 0, *FAST, workdir=str(tmp_path))
            self.relays.append(relay)
            port = relay.port
        self.client = Client(f"tcp:127.0.0.1:{port}", **CLIENT)

    async def stop(self) -> None:
        await self.client.stop()
        for proc in [*self.relays, self.origin]:
            await proc.kill()


async def startChain(hops, tmp_path) -> ProcessChain:
    chain = ProcessChain()
    await chain.start(hops, tmp_path)
    return chain


@pytest.mark.parametrize("hops", [1, 2, 3])
@pytest_twisted.ensureDeferred
async def test_chainOfProcesses(hops, tmp_path):
    chain = await startChain(hops, tmp_path)
    try:
        registry = await chain.client.getRegistry()
        users = await registry.getManager(IUserManager)
        # Copies of a class the relays never imported arrive as that class.
        alice = await users.getUser("alice")
        assert type(alice) is User and alice.name == "alice"
        # ... and travel the other way through the relays unchanged.
        assert await users.addUser(User(name="eve", email="e@x")) == "User"
        assert await users.getUser("eve") == User(name="eve", email="e@x")
        with pytest.raises(NotAllowed):
            await users.fail("app")
        admin = await users.getAdmin()
        assert await admin.ping() == "pong"
        mirror = await users.getModel("alice")
        assert type(mirror) is UserModel
        changes = SignalLog(signals.changed, mirror)
        try:
            arrived = changes.next()
            await users.setOnline("alice", True)
            await arrived
            assert mirror.online is True
        finally:
            changes.close()
    finally:
        await chain.stop()


@pytest_twisted.ensureDeferred
async def test_killAndRestartTheMiddleRelay(tmp_path):
    chain = await startChain(3, tmp_path)
    direct = Client(f"tcp:127.0.0.1:{chain.origin.port}", **CLIENT)
    try:
        users = await (await chain.client.getRegistry()).getManager(IUserManager)
        atOrigin = await (await direct.getRegistry()).getManager(IUserManager)
        mirror = await users.getModel("bob")
        changes = SignalLog(signals.changed, mirror)
        try:
            middle = chain.relays[1]
            await middle.kill()
            # The end client's own link (to the last relay) stays up, and its
            # calls fail at once while the chain is broken.
            with pytest.raises(errors.ConnectionLost):
                await users.echo(1)
            assert chain.client.connected
            # A change at the origin during the outage ...
            await atOrigin.setOnline("bob", True)
            healed = changes.next()
            chain.relays[1] = await RelayProcess.start(
                middle.upstreamPort, middle.port, *FAST, workdir=str(tmp_path))
            # ... reaches the same mirror once the last relay has resynced.
            await healed
            assert mirror.online is True
            # The same wrapper works again, and so do changes after the outage.
            assert await users.echo(2) == 2
            after = changes.next()
            await users.setOnline("bob", False)
            await after
            assert mirror.online is False
            assert [e["value"] for e in changes.events] == [True, False]
        finally:
            changes.close()
    finally:
        await direct.stop()
        await chain.stop()


@pytest_twisted.ensureDeferred
async def test_killAndRestartTheOrigin(tmp_path):
    chain = await startChain(2, tmp_path)
    try:
        users = await (await chain.client.getRegistry()).getManager(IUserManager)
        mirror = await users.getModel("alice")
        changes = SignalLog(signals.changed, mirror)
        try:
            origin = chain.origin
            await origin.kill()
            with pytest.raises(errors.ConnectionLost):
                await users.echo(1)
            healed = changes.next()
            # The new origin starts with alice online: a change made "while
            # away", which the relays' resync carries to the end mirror.
            chain.origin = await ServerProcess.start(origin.port, "--online", "alice")
            await healed
            assert mirror.online is True
            assert await users.echo(2) == 2
            assert chain.client.connected
        finally:
            changes.close()
    finally:
        await chain.stop()


@pytest_twisted.ensureDeferred
async def test_bareRelayNeedsNoFlagNorApplicationCode(tmp_path):
    """
    Server(client.registry), in a process without the application's modules,
    passes copies, models and errors on: serving the registry is what makes
    the client relay its upstream's types (no opaque=True).
    """
    origin = await ServerProcess.start()
    relay = await RelayProcess.start(origin.port, workdir=str(tmp_path), bare=True)
    client = Client(f"tcp:127.0.0.1:{relay.port}", **CLIENT)
    try:
        users = await (await client.getRegistry()).getManager(IUserManager)
        alice = await users.getUser("alice")
        assert type(alice) is User and alice.name == "alice"
        model = await users.getModel("alice")
        assert type(model) is UserModel
        with pytest.raises(NotAllowed):
            await users.fail("app")
    finally:
        await client.stop()
        await relay.kill()
        await origin.kill()
