"""
Tests of the example application (users.py), the way an application tests
itself with aurora.testing: its UserManager behind a real aurora Server, a
real Client calling it, connected in memory, time moved by the test.  No
sockets, no processes, no running reactor.

    cd examples && python -m unittest test_users      # or python -m pytest test_users.py

(`make test` runs them too, from tests/test_examples.py.)
"""

from __future__ import annotations

import sqlite3
import unittest
from typing import Any

from pydispatch import dispatcher
from twisted.internet import defer

from aurora import Registry, errors, signals
from aurora.testing import MemoryNetwork
from users import IUserManager, UnknownUser, User, UserManager


class InlinePool:
    """
    What UserManager uses of adbapi's ConnectionPool, done at once on this
    thread: the manager's own SQL on an in-memory SQLite database, without
    adbapi's threads (a MemoryNetwork runs none).  Like adbapi, an operation
    is committed, or rolled back if it raises, and errors arrive through the
    Deferred.
    """

    def __init__(self) -> None:
        self.db = sqlite3.connect(":memory:")

    def runQuery(self, sql: str, params: tuple = ()) -> defer.Deferred:
        return defer.maybeDeferred(lambda: self.db.execute(sql, params).fetchall())

    def runOperation(self, sql: str, params: tuple = ()) -> defer.Deferred:
        def operation() -> None:
            with self.db:
                self.db.execute(sql, params)

        return defer.maybeDeferred(operation)

    def close(self) -> None:
        self.db.close()


class Changes:
    """The `changed` signals one model sends."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.seen: list[tuple[str, Any, Any]] = []
        dispatcher.connect(self.changed, signal=signals.changed, sender=model, weak=False)

    def changed(self, name: str, value: Any, old: Any) -> None:
        self.seen.append((name, old, value))

    def close(self) -> None:
        dispatcher.disconnect(self.changed, signal=signals.changed, sender=self.model,
                              weak=False)


class UserManagerTests(unittest.TestCase):
    def setUp(self):
        self.net = MemoryNetwork()              # a Clock-driven reactor; no sockets
        self.manager = UserManager(pool=InlinePool())
        self.net.result(self.manager.setUp())
        registry = Registry()
        registry.register(IUserManager, self.manager)
        self.net.serve(registry)                # a real aurora Server
        self.client = self.net.client()         # a real Client, connected in memory
        self.users = self.net.result(self.client.registry.getManager(IUserManager))
        self.addCleanup(self.manager.close)
        self.addCleanup(self.net.stop)

    def test_presenceThroughAnOutage(self):
        presence = self.net.result(self.users.getModel("alice"))   # a live mirror
        changes = Changes(presence)
        self.addCleanup(changes.close)
        self.net.result(self.users.setOnline("alice", True))
        self.assertEqual(changes.seen, [("online", False, True)])

        self.net.disconnect()                   # the network goes down
        self.assertFalse(self.client.connected)
        with self.assertRaises(errors.ConnectionLost):
            self.net.result(self.users.getUser("alice"))
        self.net.result(self.manager.setOnline("alice", False))    # meanwhile, on the server

        self.net.reconnect()
        self.net.advance(1)                     # the client's retry, on the clock
        self.assertTrue(self.client.connected)
        self.assertEqual(changes.seen[-1], ("online", True, False))  # resynced
        self.assertEqual(self.net.result(self.users.getUser("alice")).name, "alice")

    def test_getUser(self):
        alice = self.net.result(self.users.getUser("alice"))
        self.assertIsInstance(alice, User)     # a copy, by value
        self.assertEqual(alice.email, "alice@example.org")

    def test_unknownUser(self):
        with self.assertRaises(UnknownUser) as caught:   # the error, as its own class
            self.net.result(self.users.getUser("nobody"))
        self.assertEqual(caught.exception.name, "nobody")

    def test_addUser(self):
        carol = User(name="carol", email="carol@example.org")
        self.net.result(self.users.addUser(carol))
        names = [user.name for user in self.net.result(self.users.listUsers())]
        self.assertEqual(names, ["alice", "bob", "carol"])
        with self.assertRaisesRegex(errors.Error, "exists already"):
            self.net.result(self.users.addUser(carol))

    def test_unknownUserHasNoModel(self):
        with self.assertRaises(UnknownUser):
            self.net.result(self.users.getModel("nobody"))


if __name__ == "__main__":
    unittest.main()
