"""A small application used by the tests: interfaces, copies, models, managers."""

from __future__ import annotations

from twisted.internet import defer, task
from zope.interface import Interface, implementer

from aurora import Copyable, Manager, Model, errors
from aurora.remote import noReplay


class IUserManager(Interface):
    """Users and their presence."""

    def getUser(name):
        """The User called C{name}."""

    def listUsers():
        """Every User."""

    def getModel(name):
        """The live UserModel of C{name}."""

    def getModels(names):
        """A dict of name to UserModel."""

    def setOnline(name, online):
        """Change a user's presence."""

    def echo(value):
        """C{value}, sent back."""

    def slowEcho(value, delay):
        """C{value}, after C{delay} seconds."""

    def asyncEcho(value):
        """C{value}, from an async def."""

    def fail(kind):
        """Raise an exception of C{kind}."""

    def getAdmin():
        """Another manager."""

    def listModels():
        """Every UserModel, in the server's order."""

    @noReplay
    def openModel(name):
        """A UserModel that must not be fetched again after a reconnect."""

    def makeModels(count):
        """C{count} distinct UserModels (kept: asking again gives the same)."""

    def addUser(user):
        """Store a User sent by the caller; answer its class's name."""


class IAdmin(Interface):
    def ping():
        """pong"""


class User(Copyable):
    fields = ("name", "email")


class UserModel(Model):
    fields = ("name", "online")
    keyField = "name"


class NotAllowed(errors.Error):
    fields = ("who",)


@implementer(IAdmin)
class Admin(Manager):
    def ping(self):
        return "pong"

    def secret(self):
        return "not exposed"


@implementer(IUserManager)
class UserManager(Manager):
    def __init__(self, clock=None, online=(), reverse=False):
        from twisted.internet import reactor

        self.clock = clock or reactor
        self.reverse = reverse
        self.users = {n: User(name=n, email=f"{n}@example.org") for n in ("alice", "bob")}
        self.models = {n: UserModel(name=n, online=n in online) for n in self.users}
        self.admin = Admin()
        self.many = []

    def getUser(self, name):
        return self.users[name]

    def listUsers(self):
        return [self.users[n] for n in sorted(self.users)]

    def getModel(self, name):
        return self.models[name]

    def getModels(self, names):
        return {n: self.models[n] for n in names}

    def setOnline(self, name, online):
        self.models[name].online = online

    def echo(self, value):
        return value

    def slowEcho(self, value, delay):
        return task.deferLater(self.clock, delay, lambda: value)

    async def asyncEcho(self, value):
        await defer.succeed(None)
        return value

    def fail(self, kind):
        if kind == "app":
            raise NotAllowed("alice may not", who="alice")
        if kind == "value":
            raise ValueError("bad value 42")
        if kind == "deferred":
            return defer.fail(KeyError("missing"))
        raise RuntimeError(kind)

    def getAdmin(self):
        return self.admin

    def listModels(self):
        return sorted(self.models.values(), key=lambda m: m.name, reverse=self.reverse)

    def openModel(self, name):
        return self.models[name]

    def makeModels(self, count):
        while len(self.many) < count:
            self.many.append(UserModel(name=f"user{len(self.many)}", online=False))
        return self.many[:count]

    def addUser(self, user):
        self.users[user.name] = user
        return type(user).__name__

    def notInInterface(self):
        return "hidden"
