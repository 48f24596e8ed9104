"""
The plain-value jelly gives exactly what Twisted's jelly gives, and hands
everything else to it.
"""

from __future__ import annotations

import datetime
import decimal
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.spread import jelly

from aurora._plain import MAX_DEPTH, NotPlain, jellyPlain, unjellyPlain
from aurora._jelly import SECURITY

leaves = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
          | st.text() | st.binary())
keys = st.none() | st.booleans() | st.integers() | st.text() | st.binary()
plain = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=5)
    | st.lists(children, max_size=5).map(tuple)
    | st.dictionaries(keys, children, max_size=5),
    max_leaves=30,
)


def same(a, b) -> bool:
    """Equal, of the same types all the way down, nan equal to nan."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            any(same(k, k2) and same(v, b[k2]) for k2 in b) for k, v in a.items())
    return a == b


@settings(max_examples=300, deadline=None)
@given(plain)
def test_sameSexpAndValueAsJelly(value):
    try:
        sexp = jellyPlain(value)
    except NotPlain:
        # Only for a container met twice (a singleton such as (), too),
        # which jelly sends as a reference.
        assert b"dereference" in repr(jelly.jelly(value, SECURITY)).encode()
        return
    assert same(sexp, jelly.jelly(value, SECURITY))
    assert same(unjellyPlain(sexp), jelly.unjelly(sexp, SECURITY))


def test_sharedAndCyclicContainersGoToJelly():
    inner = [1]
    with pytest.raises(NotPlain):
        jellyPlain([inner, inner])
    loop: list = []
    loop.append(loop)
    with pytest.raises(NotPlain):
        jellyPlain(loop)
    shared = (1, 2)
    with pytest.raises(NotPlain):
        jellyPlain({"a": shared, "b": shared})


class Sub(int):
    pass


@pytest.mark.parametrize("value", [
    Sub(1), [Sub(2)], type("S", (str,), {})("x"), {1: datetime.date(2020, 1, 1)},
    decimal.Decimal("1.5"), object(), {1, 2}, frozenset([1]),
])
def test_otherTypesGoToJelly(value):
    with pytest.raises(NotPlain):
        jellyPlain(value)


def test_depthIsBounded():
    deep: list = []
    for _ in range(MAX_DEPTH + 1):
        deep = [deep]
    with pytest.raises(NotPlain):
        jellyPlain(deep)
    sexp: list = [b"list"]
    for _ in range(MAX_DEPTH + 1):
        sexp = [b"list", sexp]
    with pytest.raises(NotPlain):
        unjellyPlain(sexp)


atoms = st.sampled_from([b"list", b"tuple", b"dictionary", b"unicode", b"None",
                         b"boolean", b"true", b"false", b"reference", b"dereference",
                         b"remote", b"set", b"\xff", b"os.system"])
sexps = st.recursive(
    st.integers() | st.floats(allow_nan=False) | st.binary(max_size=4) | atoms,
    lambda children: st.lists(children, max_size=4)
    | st.tuples(atoms, st.lists(children, max_size=3)).map(lambda t: [t[0], *t[1]]),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(sexps)
def test_anySexpIsEitherRefusedOrReadAsJellyReadsIt(sexp):
    try:
        value = unjellyPlain(sexp)
    except NotPlain:
        return
    assert same(value, jelly.unjelly(sexp, SECURITY))


@pytest.mark.parametrize("sexp", [
    [b"unicode", b"\xff"], [b"unicode"], [b"unicode", 1], [b"None", 1],
    [b"boolean", b"maybe"], [b"dictionary", b"ab"], [b"dictionary", [1]],
    [b"dictionary", [[b"list"], 1]], [b"reference", 1, [b"list"]], [],
])
def test_irregularFormsGoToJelly(sexp):
    with pytest.raises(NotPlain):
        unjellyPlain(sexp)


def test_atomsCannotBeTakenOverByDeclaredOrAdvertisedTypes():
    from aurora import Copyable
    from aurora._types import TypeTable
    from aurora.remoteable import OpaqueCopy

    with pytest.raises(ValueError, match="dotted"):
        class Hijack(Copyable):
            typeName = "list"
            fields = ("x",)
    before = dict(jelly.unjellyableRegistry)
    table = TypeTable()
    for name in ("list", "unicode", "remote", "aurora.ref",
                 "twisted.spread.pb.CopyableFailure"):
        table.registerOpaque(name, OpaqueCopy, ["x"])  # what a hostile upstream could advertise
    assert jelly.unjellyableRegistry == before
    assert table.advertised().keys().isdisjoint(
        {"list", "unicode", "remote", "aurora.ref", "twisted.spread.pb.CopyableFailure"})
    assert unjellyPlain([b"list", [b"unicode", b"x"]]) == ["x"]


def test_loneSurrogateGoesToJelly():
    with pytest.raises(NotPlain):
        jellyPlain("\ud800")
