"""
jelly for plain values, fast.

Most calls carry only plain values (str, int, float, bytes, bool, None and
lists, tuples, dicts of them).  Twisted's jelly builds a jellier or
unjellier with several tables per message and dispatches every value by
name; for plain values the s-expressions are simple, so these functions
produce exactly what jelly and unjelly would (the wire stays PB's: a stock
peer reads and writes the same bytes) and raise L{NotPlain} for anything
else, which then goes the full, checked way.

Only types every aurora jelly taster allows are handled here, so skipping
the taster changes nothing.
"""

from __future__ import annotations

from typing import Any

MAX_DEPTH = 100


class NotPlain(Exception):
    """
    Not a plain value (or not the plain form of one): use the full jelly.

    Raised as a new instance every time: one shared instance would keep its
    last traceback, and the values in its frames, alive.
    """


_LEAVES = frozenset((bytes, int, float))
_NONE = [b"None"]
_TRUE = [b"boolean", b"true"]
_FALSE = [b"boolean", b"false"]


def jellyPlain(obj: Any) -> Any:
    """What C{jelly.jelly(obj)} returns, for a plain value; else L{NotPlain}."""
    return _jelly(obj, set(), 0, {})


def _jelly(obj: Any, seen: set[int], depth: int, texts: dict[int, Any]) -> Any:
    t = type(obj)
    if t in _LEAVES:
        return obj
    if t is str:
        if len(obj) < 64:
            try:
                return [b"unicode", obj.encode("utf-8")]
            except UnicodeEncodeError:  # a lone surrogate: jelly's own error
                raise NotPlain from None
        # A long string met many times is encoded once (the encoder then
        # writes it each time, as jelly would, within its size limit).
        jellied = texts.get(id(obj))
        if jellied is None:
            try:
                jellied = texts[id(obj)] = [b"unicode", obj.encode("utf-8")]
            except UnicodeEncodeError:
                raise NotPlain from None
        return jellied
    if obj is None:
        return [b"None"]
    if t is bool:
        return [b"boolean", b"true" if obj else b"false"]
    if t is list or t is tuple or t is dict:
        # jelly sends a container met twice as a reference to the first:
        # that, and cycles, are left to it.
        if depth >= MAX_DEPTH or id(obj) in seen:
            raise NotPlain
        seen.add(id(obj))
        depth += 1
        if t is dict:
            out: list[Any] = [b"dictionary"]
            for k, v in obj.items():
                out.append([_jelly(k, seen, depth, texts), _jelly(v, seen, depth, texts)])
            return out
        out = [b"list" if t is list else b"tuple"]
        for item in obj:
            out.append(_jelly(item, seen, depth, texts))
        return out
    raise NotPlain


def unjellyPlain(sexp: Any) -> Any:
    """What C{jelly.unjelly(sexp)} returns, for a plain value; else L{NotPlain}."""
    return _unjelly(sexp, 0)


def _unjelly(sexp: Any, depth: int) -> Any:
    if type(sexp) is not list:
        return sexp  # what banana decodes besides lists: bytes, int, float
    if not sexp or depth >= MAX_DEPTH:
        raise NotPlain
    atom = sexp[0]
    n = len(sexp)
    if atom == b"unicode":
        if n != 2 or type(sexp[1]) is not bytes:
            raise NotPlain
        try:
            return sexp[1].decode("utf-8")
        except UnicodeDecodeError:
            raise NotPlain from None
    depth += 1
    if atom == b"list":
        return [_unjelly(item, depth) for item in sexp[1:]]
    if atom == b"tuple":
        return tuple([_unjelly(item, depth) for item in sexp[1:]])
    if atom == b"dictionary":
        out = {}
        for i in range(1, n):
            entry = sexp[i]
            if type(entry) is not list or len(entry) != 2:
                raise NotPlain
            try:
                out[_unjelly(entry[0], depth)] = _unjelly(entry[1], depth)
            except TypeError:  # an unhashable key: the full unjelly decides
                raise NotPlain from None
        return out
    if sexp == _NONE:
        return None
    if sexp == _TRUE:
        return True
    if sexp == _FALSE:
        return False
    raise NotPlain
