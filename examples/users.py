"""
The design notes' example, written with aurora: a user manager keeping its
users in SQLite, handing out User records (copies) and UserModels (live).

Both the server (examples/server.py) and the client (examples/tour.py) import
this module, so a User is a User on both sides.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from twisted.enterprise import adbapi
from zope.interface import Interface, implementer

from aurora import Copyable, Manager, Model, errors


class IUserManager(Interface):
    """Users and their presence."""

    def getUser(name):
        """The User called C{name}; UnknownUser if there is none."""

    def listUsers():
        """Every User, by name."""

    def addUser(user):
        """Store a new User."""

    def getModel(name):
        """The live UserModel of C{name}."""

    def setOnline(name, online):
        """Mark a user on- or offline."""


class User(Copyable):
    """A user record, sent by value."""

    fields = ("name", "email")


class UserModel(Model):
    """A user's presence, observed live."""

    fields = ("name", "online")


class UnknownUser(errors.Error, LookupError):
    """No user by that name."""

    fields = ("name",)


@implementer(IUserManager)
class UserManager(Manager):
    """
    Users in SQLite, through Twisted's adbapi (a file or ``:memory:``).

    ``pool`` replaces the adbapi pool: anything with its ``runQuery``,
    ``runOperation`` and ``close``.  The tests (test_users.py) run the same
    SQL without adbapi's threads, which an in-memory aurora network does
    not run.
    """

    def __init__(self, database: str = ":memory:", *, pool: Any = None) -> None:
        # One connection: every ":memory:" connection is a database of its own.
        self.pool = pool if pool is not None else adbapi.ConnectionPool(
            "sqlite3", database, check_same_thread=False, cp_min=1, cp_max=1
        )
        self.models: dict[str, UserModel] = {}

    async def setUp(self) -> None:
        await self.pool.runOperation(
            "CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, email TEXT)"
        )
        for name in ("alice", "bob"):
            await self.pool.runOperation(
                "INSERT OR IGNORE INTO users VALUES (?, ?)", (name, f"{name}@example.org")
            )

    async def getUser(self, name: str) -> User:
        rows = await self.pool.runQuery(
            "SELECT name, email FROM users WHERE name = ?", (name,)
        )
        if not rows:
            raise UnknownUser(f"no user called {name!r}", name=name)
        return User(name=rows[0][0], email=rows[0][1])

    async def listUsers(self) -> list[User]:
        rows = await self.pool.runQuery("SELECT name, email FROM users ORDER BY name")
        return [User(name=n, email=e) for n, e in rows]

    async def addUser(self, user: User) -> None:
        try:
            await self.pool.runOperation(
                "INSERT INTO users VALUES (?, ?)", (user.name, user.email)
            )
        except sqlite3.IntegrityError:
            raise errors.Error(f"a user called {user.name!r} exists already") from None

    async def getModel(self, name: str) -> UserModel:
        await self.getUser(name)  # UnknownUser for a stranger
        if name not in self.models:
            self.models[name] = UserModel(name=name, online=False)
        return self.models[name]

    async def setOnline(self, name: str, online: bool) -> None:
        model = await self.getModel(name)
        model.online = online

    def close(self) -> None:
        self.pool.close()


async def register(registry) -> None:
    """The twistd --setup hook: ``twistd -n registry --setup users:register``."""
    manager = UserManager()
    await manager.setUp()
    registry.register(IUserManager, manager)
