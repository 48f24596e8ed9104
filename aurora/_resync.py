"""
Resync: what a client has handed out (wrappers, model mirrors), the call
that produced each, and fetching them again after a reconnect so that the
objects the application holds follow the new connection.
"""

from __future__ import annotations

import weakref
from typing import Any

from twisted.logger import Logger

from aurora._model import Model
from aurora._wrapper import Wrapper
from aurora.errors import ConnectionLost, Error, StaleReference, _safeRepr


class Origin:
    """The call that produced a result: how to get its objects again."""

    def __init__(self, parent: Wrapper, method: str, args: tuple,
                 kw: dict[str, Any], replay: bool) -> None:
        self.parent = parent
        self.method = method
        self.args = args
        self.kw = kw
        self.replay = replay

    def depth(self) -> int:
        """Parents are resynced before their children: the root has depth 0."""
        depth, parent = 1, self.parent
        while parent._origin is not None and depth < 64:
            depth += 1
            parent = parent._origin[0].parent
        return depth

    def __repr__(self) -> str:
        # Named in StaleReference messages: the arguments shortened, without
        # addresses.
        return f"<{self.parent!r}.{self.method}{_safeRepr(self.args)}>"


_MAX_WALK = 10_000  # objects looked at per result; a bigger result is not walked


def _walk(value: Any, path: tuple = ()) -> Any:
    """Yield (wrapper or mirror, path) for what is inside a call's result."""
    stack = [(value, path)]
    seen = 0
    while stack and seen < _MAX_WALK:
        value, path = stack.pop()
        seen += 1
        if isinstance(value, Wrapper):
            yield value, path
        elif isinstance(value, Model):
            if value._link is not None:
                yield value, path
        elif isinstance(value, (list, tuple)):
            stack.extend((v, path + (i,)) for i, v in enumerate(value))
        elif isinstance(value, dict):
            stack.extend((v, path + (k,)) for k, v in value.items()
                         if isinstance(k, (str, bytes, int, float, bool)))


def locate(result: Any, path: tuple, old: Any) -> Any:
    """
    Find in a replayed C{result} the counterpart of C{old}, which was at
    C{path} in the original result.  Dict entries match by key; list entries
    by position, or for a Model that declares C{keyField}, by that field.
    """
    value = result
    for i, step in enumerate(path):
        last = i == len(path) - 1
        if isinstance(value, dict):
            value = value.get(step)
        elif isinstance(value, (list, tuple)):
            key = getattr(old, "keyField", None)
            if key is not None and isinstance(old, Model) and last:
                wanted = old.__dict__.get(key)
                matches = [v for v in value if type(v) is type(old)
                           and v.typeName == old.typeName
                           and v.__dict__.get(key) == wanted]
                value = matches[0] if matches else None
            else:
                value = value[step] if isinstance(step, int) and step < len(value) \
                    else None
        else:
            return None
    if isinstance(old, Wrapper):
        return value if isinstance(value, Wrapper) else None
    if type(value) is not type(old) or value.typeName != old.typeName:
        return None
    return value


class Tracker:
    """
    The wrappers and mirrors a client has handed out, each with the call that
    produced it, so a reconnect can fetch them again.  Held weakly: what the
    application drops is forgotten.
    """

    def __init__(self) -> None:
        self._live: weakref.WeakSet[Any] = weakref.WeakSet()

    def record(self, result: Any, parent: Wrapper, method: str, args: tuple,
               kw: dict[str, Any]) -> Any:
        if isinstance(result, (str, bytes, int, float, type(None))):
            return result
        origin: Origin | None = None
        for obj, path in _walk(result):
            if obj.__dict__.get("_origin") is not None or obj is parent:
                continue  # the first way to an object is the one replayed
            if origin is None:
                origin = Origin(parent, method, args, kw, _replayable(parent, method))
            obj.__dict__["_origin"] = (origin, path)
            self._live.add(obj)
        return result

    def live(self) -> list[Any]:
        return list(self._live)

    def forget(self, obj: Any) -> None:
        self._live.discard(obj)

    async def resync(self, timeout: float | None, log: Logger) -> None:
        """
        Fetch again what the application holds, parents before children,
        and swap what comes back into the objects it holds; what cannot be
        fetched again fails (L{StaleReference} when that is final).  Each
        replayed call has C{timeout}; a lost connection ends the resync.
        """
        groups: dict[Any, list[tuple[Any, tuple]]] = {}
        for obj in self.live():
            origin, path = obj.__dict__["_origin"]
            groups.setdefault(origin, []).append((obj, path))
        for origin in sorted(groups, key=lambda o: o.depth()):
            members = groups[origin]
            why = origin.parent.__dict__.get("_error")
            if why is None and not origin.replay:
                why = StaleReference(
                    f"{origin!r} is marked noReplay: what it returned cannot "
                    "be fetched again after a reconnect")
            if why is not None:
                self.fail(members, why, final=isinstance(why, StaleReference))
                continue
            try:
                result = await origin.parent._call(
                    origin.method, origin.args, origin.kw, timeout)
            except ConnectionLost:
                raise
            except Error as e:
                log.warn("replaying {origin!r} failed: {error}",
                              origin=origin, error=e)
                self.fail(members, e, final=False)
                continue
            for obj, path in members:
                new = locate(result, path, obj)
                if new is None:
                    self.fail([(obj, path)], StaleReference(
                        f"{origin!r} no longer returns a match for {obj!r}"),
                        final=True)
                elif isinstance(obj, Model) and new is not obj and \
                        new.__dict__.get("_origin") is not None:
                    # The application holds two mirrors of one model (it
                    # fetched it again while this one was failing); the
                    # other follows it now, and one face per model is the
                    # rule that keeps `changed` senders unambiguous.
                    self.fail([(obj, path)], StaleReference(
                        f"{obj!r} is a second mirror of the model that {new!r} "
                        "follows; use that one"), final=True)
                elif new is not obj:
                    obj._rebind(new)

    def fail(self, members: list[tuple[Any, tuple]], error: Error,
             final: bool) -> None:
        """C{members} fail with C{error}; forgotten if C{final}."""
        for obj, _ in members:
            obj.__dict__["_error"] = error
            if final:
                self.forget(obj)
            if isinstance(obj, Model):
                link = obj.__dict__.get("_link")
                if link is not None:
                    link.detach()


def _replayable(parent: Wrapper, method: str) -> bool:
    entry = parent._exposed().get(method)
    return entry is None or not entry[1].queryTaggedValue("noReplay", False)
