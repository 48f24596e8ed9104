"""
L{aurora._banana} against stock L{twisted.spread.banana.Banana}: the same
bytes out, the same expressions (or the same refusal) in.
"""

from __future__ import annotations

import math
import struct
from contextlib import contextmanager
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.spread import banana
from twisted.spread.banana import BananaError

from aurora._banana import (
    PB_INCOMING, PB_OUTGOING, Decoder, Refusal, encode, encodeInto, listHeader,
)

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

VOCAB_WORDS = sorted(PB_OUTGOING)


# -- stock helpers ---------------------------------------------------------


def stockBanana(prefixLimit: int = 64) -> banana.Banana:
    b = banana.Banana()
    b.connectionMade()
    b.setPrefixLimit(prefixLimit)
    b._selectDialect(b"pb")
    return b


def stockEncode(obj: Any) -> bytes:
    parts: list[bytes] = []
    stockBanana()._encode(obj, parts.append)
    return b"".join(parts)


def stockDecode(chunks: list[bytes], prefixLimit: int = 64):
    """The expressions stock decodes, the exception it raised, and its state."""
    b = stockBanana(prefixLimit)
    got: list[Any] = []
    b.expressionReceived = got.append
    error = None
    try:
        for chunk in chunks:
            b.dataReceived(chunk)
    except Exception as e:
        error = e
    return got, error, len(b.buffer), len(b.listStack)


def ourDecode(chunks: list[bytes], prefixLimit: int = 64, sizeLimit: int | None = None):
    got: list[Any] = []
    kw = {} if sizeLimit is None else {"sizeLimit": sizeLimit}
    d = Decoder(got.append, prefixLimit=prefixLimit, **kw)
    error = None
    try:
        for chunk in chunks:
            d.feed(chunk)
    except Exception as e:
        error = e
    return got, error, d.pending, d.depth


def same(a: Any, b: Any) -> bool:
    """Equality that tells floats apart by their bits (nan, -0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return struct.pack("!d", a) == struct.pack("!d", b)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


def normalised(obj: Any) -> Any:
    """What an expression decodes as: tuples become lists, bools ints."""
    if isinstance(obj, (list, tuple)):
        return [normalised(x) for x in obj]
    if isinstance(obj, bool):
        return int(obj)
    return obj


@contextmanager
def stockSizeLimit(limit: int) -> Iterator[None]:
    """Stock's decoder reads the module constant, not its attribute."""
    saved = banana.SIZE_LIMIT
    banana.SIZE_LIMIT = limit
    try:
        yield
    finally:
        banana.SIZE_LIMIT = saved


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """data cut at the given offsets, with no empty chunks (stock asserts)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def assertSameOutcome(chunks: list[bytes], prefixLimit: int = 64) -> None:
    theirs, theirError, theirPending, theirDepth = stockDecode(chunks, prefixLimit)
    ours, ourError, ourPending, ourDepth = ourDecode(chunks, prefixLimit)
    assert same(ours, theirs), (ours, theirs)
    assert type(ourError) is type(theirError), (ourError, theirError)
    if theirError is None:
        assert (ourPending, ourDepth) == (theirPending, theirDepth)


# -- strategies ------------------------------------------------------------

boundaryInts = st.sampled_from(
    [0, 1, 127, 128, 16383, 16384, 1023, 1024, -1, -127, -128,
     2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**63, -(2**63),
     2**448 - 1, -(2**448) + 1]
)
ints = st.one_of(
    boundaryInts,
    st.integers(-(2**40), 2**40),
    st.integers(-(2**448) + 1, 2**448 - 1),
)
byteStrings = st.one_of(
    st.sampled_from(VOCAB_WORDS),
    st.binary(max_size=40),
    st.binary(min_size=1000, max_size=1100),
)
floats = st.floats(allow_nan=True, allow_infinity=True)
atoms = st.one_of(ints, byteStrings, floats, st.booleans())
expressions = st.recursive(
    atoms,
    lambda children: st.one_of(
        st.lists(children, max_size=6),
        st.lists(children, max_size=6).map(tuple),
    ),
    max_leaves=40,
)
cuts = st.lists(st.integers(min_value=0, max_value=10**6), max_size=12)

# Bytes that are mostly tokens, so that random input gets past the first
# few bytes: short prefixes, every type byte (and some invalid ones).
tokenish = st.lists(
    st.one_of(
        st.sampled_from([bytes([b]) for b in range(0x80, 0x89)] + [b"\xff"]),
        st.binary(max_size=3).map(lambda b: bytes(x & 0x7F for x in b)),
        st.binary(max_size=4),
    ),
    max_size=30,
).map(b"".join)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid encoding, then damaged: bytes flipped, dropped, added, cut."""
    data = bytearray(encode(draw(expressions)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "drop", "insert", "truncate"]))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif op == "drop":
            del data[at : at + draw(st.integers(1, 3))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=3))
        elif op == "truncate":
            del data[at:]
    return bytes(data)


# -- encoding --------------------------------------------------------------


@SETTINGS
@given(expressions, cuts)
def test_roundTripMatchesStock(obj: Any, cutAt: list[int]) -> None:
    """
    encode writes stock's bytes, and Decoder, fed them in any pieces, yields
    what stock decodes from them.
    """
    data = encode(obj)
    assert data == stockEncode(obj)
    chunks = split(data, cutAt)
    theirs, theirError, _, _ = stockDecode(chunks)
    assert theirError is None
    ours, ourError, pending, depth = ourDecode(chunks)
    assert ourError is None
    assert same(ours, theirs)
    assert (pending, depth) == (0, 0)
    if not (isinstance(obj, float) and math.isnan(obj)):
        assert same(ours, [normalised(obj)]) or _hasNan(obj)


def _hasNan(obj: Any) -> bool:
    if isinstance(obj, (list, tuple)):
        return any(_hasNan(x) for x in obj)
    return isinstance(obj, float) and math.isnan(obj)


def test_encodeInto() -> None:
    out = [b"before"]
    encodeInto([b"message", 300, b"x"], out)
    assert b"".join(out[1:]) == stockEncode([b"message", 300, b"x"])
    assert out[0] == b"before"


def test_encodeKnownBytes() -> None:
    """A few encodings spelled out, so the property is not stock vs itself."""
    assert encode([]) == b"\x00\x80"
    assert encode(b"message") == b"\x1a\x87"
    assert encode(b"ab") == b"\x02\x82ab"
    assert encode(200) == b"\x48\x01\x81"
    assert encode(-1) == b"\x01\x83"
    assert encode(2**31) == b"\x00\x00\x00\x00\x08\x85"
    assert encode(-(2**31) - 1) == b"\x01\x00\x00\x00\x08\x86"
    assert encode(1.5) == b"\x84" + struct.pack("!d", 1.5)
    assert encode((True, False)) == b"\x02\x80\x01\x81\x00\x81"


def test_encodeWithoutVocabulary() -> None:
    parts: list[bytes] = []
    b = banana.Banana()
    b.connectionMade()
    b._selectDialect(b"none")
    b._encode([b"message", b"tuple"], parts.append)
    assert encode([b"message", b"tuple"], vocabulary=None) == b"".join(parts)
    assert encode(b"x", vocabulary={b"x": 300}) == b"\x2c\x02\x87"


@pytest.mark.parametrize(
    "obj",
    [
        "text",
        {b"a": 1},
        None,
        object(),
        bytearray(b"x"),
        2**448,
        -(2**448),
        [1, [2, None]],
        b"x" * (banana.SIZE_LIMIT + 1),
        [0] * (banana.SIZE_LIMIT + 1),
        (0,) * (banana.SIZE_LIMIT + 1),
    ],
    ids=repr,
)
def test_encodeRefusesWhatStockRefuses(obj: Any) -> None:
    with pytest.raises(BananaError):
        stockEncode(obj)
    with pytest.raises(BananaError):
        encode(obj)


def test_encodeAtTheSizeLimit() -> None:
    data = b"x" * banana.SIZE_LIMIT
    assert encode(data) == stockEncode(data)
    items = [0] * banana.SIZE_LIMIT
    assert encode(items) == stockEncode(items)


def test_encodeSubclasses() -> None:
    """Stock accepts subclasses of the basic types; so does encode."""

    class L(list):
        pass

    class B(bytes):
        pass

    class F(float):
        pass

    import enum

    class E(enum.IntEnum):
        big = 2**40

    obj = L([B(b"tuple"), B(b"xyz"), F(2.5), E.big, L([True])])
    assert encode(obj) == stockEncode(obj)


# -- decoding: same outcome as stock on any input --------------------------


@SETTINGS
@given(st.one_of(tokenish, st.binary(max_size=60), mutated()), cuts)
def test_arbitraryInputLikeStock(data: bytes, cutAt: list[int]) -> None:
    """
    On arbitrary (mostly broken) input, Decoder delivers the same expressions
    as stock, raises the same exception class, and is left with as many
    pending bytes and open lists.
    """
    assertSameOutcome(split(data, cutAt))


@SETTINGS
@given(st.one_of(tokenish, mutated()), cuts, st.integers(0, 4))
def test_arbitraryInputSmallPrefixLimit(data: bytes, cutAt: list[int], limit: int) -> None:
    """Decoder takes the short prefix paths only where the limit allows."""
    assertSameOutcome(split(data, cutAt), prefixLimit=limit)


@SETTINGS
@given(st.one_of(tokenish, mutated()), cuts, st.integers(0, 40))
def test_arbitraryInputSmallSizeLimit(data: bytes, cutAt: list[int], limit: int) -> None:
    chunks = split(data, cutAt)
    with stockSizeLimit(limit):
        theirs, theirError, theirPending, theirDepth = stockDecode(chunks)
    ours, ourError, ourPending, ourDepth = ourDecode(chunks, sizeLimit=limit)
    assert same(ours, theirs)
    assert type(ourError) is type(theirError)
    if theirError is None:
        assert (ourPending, ourDepth) == (theirPending, theirDepth)


@pytest.mark.parametrize(
    "data, error",
    [
        (b"\x88", NotImplementedError),
        (b"\x05\xff", NotImplementedError),
        (b"\x7f\x87", KeyError),
        (b"\x00\x87", KeyError),
        (b"\x01" * 65 + b"\x81", BananaError),
        (b"\x01" * 65, BananaError),
        (b"\x01" * 65 + b"\x88", BananaError),
        (banana.encode(banana.SIZE_LIMIT + 1)[:-1] + b"\x82", BananaError),
        (banana.encode(banana.SIZE_LIMIT + 1)[:-1] + b"\x80", BananaError),
    ],
)
def test_malformed(data: bytes, error: type[Exception]) -> None:
    """Each refusal stock makes, with the exception it raises."""
    assert type(stockDecode([data])[1]) is error
    with pytest.raises(error):
        Decoder(lambda e: None).feed(data)


def test_oneByteAtATime() -> None:
    obj = [b"message", 7, b"root", [2**100, -5, 1.25, [], [[]], b"y" * 300], -(2**40)]
    data = encode(obj)
    got: list[Any] = []
    d = Decoder(got.append)
    for i in range(len(data)):
        assert got == []
        d.feed(data[i : i + 1])
    assert got == [normalised(obj)]
    assert (d.pending, d.depth) == (0, 0)


def test_manyMessagesInOneChunk() -> None:
    messages = [[b"message", i, b"x" * i] for i in range(50)] + [b"s", 3, []]
    got: list[Any] = []
    Decoder(got.append).feed(b"".join(encode(m) for m in messages))
    assert got == messages


def test_emptyChunk() -> None:
    """Stock asserts on an empty chunk while bytes are pending; we accept it."""
    got: list[Any] = []
    d = Decoder(got.append)
    d.feed(b"\x02")
    d.feed(b"")
    d.feed(b"\x82a")
    d.feed(b"")
    d.feed(b"b")
    assert got == [b"ab"]


# -- state the owner reads between feeds -----------------------------------


def test_depthAndPendingMidMessage() -> None:
    data = encode([b"message", [1, [b"abcdef", 2]], 3])
    got: list[Any] = []
    d = Decoder(got.append)
    assert (d.depth, d.pending) == (0, 0)
    # 3-list, VOCAB, 2-list, 1, 2-list, then the string's header and 2 bytes
    head = b"\x03\x80\x1a\x87\x02\x80\x01\x81\x02\x80"
    assert data.startswith(head + b"\x06\x82")
    d.feed(head + b"\x06\x82ab")
    assert (d.depth, d.pending) == (3, 4)
    d.feed(b"cd")
    assert (d.depth, d.pending) == (3, 6)
    d.feed(b"ef\x02")
    assert (d.depth, d.pending) == (3, 1)
    d.feed(b"\x81")  # completes the two inner lists at once
    assert (d.depth, d.pending) == (1, 0)
    d.feed(b"\x03")
    assert (d.depth, d.pending) == (1, 1)
    assert got == []
    d.feed(b"\x81")
    assert (d.depth, d.pending) == (0, 0)
    assert got == [[b"message", [1, [b"abcdef", 2]], 3]]


def test_pendingInsideCallback() -> None:
    """While onExpression runs, pending counts only what follows."""
    seen = []
    d = Decoder(lambda e: seen.append((e, d.pending, d.depth)))
    d.feed(encode(1) + encode([2]) + b"\x05\x82ab")
    assert seen == [(1, 8, 0), ([2], 4, 0)]
    assert d.pending == 4


def test_stopped() -> None:
    """Setting stopped in onExpression drops the rest of the input, now and later."""
    got: list[Any] = []

    def onExpression(e: Any) -> None:
        got.append(e)
        if e == b"stop":
            d.stopped = True

    d = Decoder(onExpression)
    d.feed(encode(b"a") + encode(b"stop") + encode(b"b") + b"\x01\x80")
    assert got == [b"a", b"stop"]
    assert (d.pending, d.depth) == (0, 0)
    d.feed(encode(b"c"))
    assert got == [b"a", b"stop"]
    d.reset()
    assert d.stopped is False
    d.feed(encode(b"d"))
    assert got == [b"a", b"stop", b"d"]


def test_stoppedSetBetweenFeeds() -> None:
    """The owner may also set stopped between feeds: later input is ignored."""
    got: list[Any] = []
    d = Decoder(got.append)
    d.feed(b"\x02\x80\x01\x81")
    assert d.depth == 1
    d.stopped = True
    d.feed(b"\x02\x81")
    assert got == []


def test_reset() -> None:
    got: list[Any] = []
    d = Decoder(got.append)
    d.feed(b"\x02\x80\x01\x81\x05\x82ab")
    assert (d.depth, d.pending) == (1, 4)
    d.reset()
    assert (d.depth, d.pending) == (0, 0)
    d.feed(encode([b"x"]))
    assert got == [[b"x"]]


def test_callbackErrorLeavesTheRestPending() -> None:
    got: list[Any] = []

    def onExpression(e: Any) -> None:
        if e == b"boom":
            raise ValueError(e)
        got.append(e)

    d = Decoder(onExpression)
    with pytest.raises(ValueError):
        d.feed(encode(b"boom") + encode(b"after") + b"\x01")
    assert d.pending == len(encode(b"after")) + 1
    d.feed(b"\x81")
    assert got == [b"after", 1]


# -- limits ----------------------------------------------------------------


def test_prefixLimit() -> None:
    """
    A prefix with no type byte yet is refused only once longer than the
    limit; a prefix of exactly the limit is fine.
    """
    d = Decoder(lambda e: None)
    d.feed(b"\x00" * 64)
    assert d.pending == 64
    with pytest.raises(BananaError):
        d.feed(b"\x00")

    got: list[Any] = []
    d = Decoder(got.append)
    d.feed(b"\x7f" * 64 + b"\x85")
    assert got == [2 ** (64 * 7) - 1]

    d = Decoder(got.append, prefixLimit=3)
    d.feed(b"\x01\x01\x01\x81")
    with pytest.raises(BananaError):
        d.feed(b"\x01\x01\x01\x01\x81")

    d = Decoder(got.append, prefixLimit=0)
    d.feed(b"\x81")
    assert got[-1] == 0
    with pytest.raises(BananaError):
        d.feed(b"\x01")


def test_sizeLimit() -> None:
    """
    A string or list over the limit is refused from its header, before any
    of its contents arrive; one at the limit is accepted.
    """
    from twisted.spread.banana import int2b128

    def header(n: int, typ: bytes) -> bytes:
        parts: list[bytes] = []
        int2b128(n, parts.append)
        return b"".join(parts) + typ

    for typ in (b"\x80", b"\x82"):
        d = Decoder(lambda e: None)
        d.feed(header(banana.SIZE_LIMIT, typ))
        with pytest.raises(BananaError):
            Decoder(lambda e: None).feed(header(banana.SIZE_LIMIT + 1, typ))

    got: list[Any] = []
    d = Decoder(got.append, sizeLimit=3)
    d.feed(b"\x03\x82abc\x03\x80\x00\x80\x00\x80\x00\x80")
    assert got == [b"abc", [[], [], []]]
    with pytest.raises(BananaError):
        d.feed(b"\x04\x82")
    with pytest.raises(BananaError):
        Decoder(got.append, sizeLimit=3).feed(b"\x04\x80")


def test_largeStringInSmallChunks() -> None:
    """A string arriving in many chunks is decoded once it is complete."""
    data = encode([b"put", b"z" * 100_000])
    got: list[Any] = []
    d = Decoder(got.append)
    for i in range(0, len(data) - 1, 1000):
        d.feed(data[i : i + 1000])
    assert got == [[b"put", b"z" * 100_000]]
    assert d.pending == 0


def test_vocabulary() -> None:
    got: list[Any] = []
    Decoder(got.append).feed(b"\x02\x80\x01\x87\x1f\x87")
    assert got == [[b"None", b"uncache"]]
    assert PB_INCOMING[31] == b"uncache"
    Decoder(got.append, vocabulary={300: b"custom"}).feed(b"\x2c\x02\x87")
    assert got[-1] == b"custom"


# -- budgets ---------------------------------------------------------------


def declaredItems(obj: Any) -> int:
    """What a message's lists declare in all: the decoder's item count."""
    if isinstance(obj, (list, tuple)):
        return len(obj) + sum(declaredItems(x) for x in obj)
    return 0


def nesting(obj: Any) -> int:
    if isinstance(obj, (list, tuple)):
        return 1 + max((nesting(x) for x in obj), default=0)
    return 0


class Budgeted:
    """A decoder under budgets that records what it delivers and refuses."""

    def __init__(self, skip: bool = True, **limits: int) -> None:
        self.got: list[Any] = []
        self.refused: list[tuple[str, list[Any]]] = []
        self.skipped: list[list[Any]] = []
        self.skip = skip
        self.d = Decoder(self.got.append, onRefused=self.onRefused,
                         onSkipped=self.skipped.append, **limits)

    def onRefused(self, why: Any, head: list[Any]) -> bool:
        self.refused.append((why.kind, head))
        return self.skip


smallExpressions = st.recursive(
    st.one_of(st.integers(-(2**40), 2**40), st.binary(max_size=8), st.floats()),
    lambda children: st.lists(children, max_size=4), max_leaves=12)


@SETTINGS
@given(st.lists(st.lists(smallExpressions, min_size=2, max_size=4), min_size=1, max_size=5),
       cuts, st.integers(1, 40), st.integers(1, 5))
def test_budgetRefusesExactlyWhatIsOver(messages: list[list[Any]], cutAt: list[int],
                                        maxItems: int, maxDepth: int) -> None:
    """
    Messages within the item and depth budgets arrive as they were sent;
    each one over a budget is refused once, told with its first items, skipped
    without being delivered, and the messages after it arrive intact, however
    the bytes are cut.
    """
    messages = [[b"message", i] + m for i, m in enumerate(messages)]
    data = b"".join(encode(m) for m in messages)
    b = Budgeted(maxItems=maxItems, maxDepth=maxDepth)
    for chunk in split(data, cutAt):
        b.d.feed(chunk)
    within = [m for m in messages
              if declaredItems(m) <= maxItems and nesting(m) <= maxDepth]
    over = [m for m in messages if m not in within]
    assert same(b.got, [normalised(m) for m in within])
    # Told with the items it had shown (up to five): none if refused at its
    # own header, else at least the kind and request id.
    heads = [head for _, head in b.refused]
    assert len(heads) == len(over)
    for m, head in zip(over, heads):
        assert same(head, normalised(m[:len(head)]))
        assert len(head) == 0 if len(m) > maxItems else 2 <= len(head) <= 5
    assert b.skipped == heads
    assert (b.d.pending, b.d.depth, b.d.skipping) == (0, 0, False)


@SETTINGS
@given(st.lists(expressions, min_size=1, max_size=6), cuts, st.integers(1, 3000))
def test_byteBudgetStops(messages: list[Any], cutAt: list[int], maxBytes: int) -> None:
    """
    The messages before the first one over the byte budget arrive; that one
    is refused and the decoder stops (bytes cannot be skipped cheaply).
    """
    encoded = [encode([m]) for m in messages]
    b = Budgeted(maxBytes=maxBytes)
    for chunk in split(b"".join(encoded), cutAt):
        b.d.feed(chunk)
    first = next((i for i, e in enumerate(encoded) if len(e) > maxBytes), None)
    expected = messages if first is None else messages[:first]
    assert same(b.got, [normalised([m]) for m in expected])
    if first is None:
        assert b.refused == [] and not b.d.stopped
    else:
        assert [kind for kind, _ in b.refused] == ["bytes"] and b.d.stopped


def test_budgetChargedBeforeBuilding() -> None:
    """
    A list header that declares more than the budget is refused at the
    header: nothing of it is built, and a string over the byte budget is
    refused at its header, before its bytes arrive.
    """
    b = Budgeted(maxItems=1000)
    b.d.feed(encode([b"message", 1]) [:-4] + listHeader(600_000))
    assert b.refused == [("items", [])]  # the header came before any item
    assert b.d.skipping

    b = Budgeted(maxBytes=100)
    b.d.feed(b"\x02\x80" + b"\x7f\x7f\x82")  # a 16383-byte string announced
    assert [k for k, _ in b.refused] == ["bytes"] and b.d.stopped


def test_skippedStringsAreNotBuffered() -> None:
    """The strings of a refused message pass through without being kept."""
    b = Budgeted(maxItems=5)
    big = b"z" * 500_000
    data = encode([b"message", 5, [1, 2, 3], big]) + encode([b"message", 6])
    b.d.feed(data[:20])
    # Told as soon as the string's header is passed; its bytes are still due.
    assert b.skipped == [[b"message", 5]]
    for i in range(20, len(data) - 100, 4096):
        b.d.feed(data[i : i + 4096])
        assert b.d.pending < 100
    b.d.feed(data[i + 4096 :])
    assert b.skipped == [[b"message", 5]]
    assert b.got == [[b"message", 6]]


def test_emptyMillionListsRefusedAtTheBudget() -> None:
    """The amplification attack: a message of empty lists costs only its budget."""
    b = Budgeted(skip=False, maxItems=10_000)
    b.d.feed(listHeader(2) + listHeader(600_000) + b"\x80" * 600_000)
    assert [k for k, _ in b.refused] == ["items"] and b.d.stopped
    assert b.d.depth == 0


def test_pausedKeepsTheRest() -> None:
    """Paused inside onExpression, the decoder keeps the rest until resumed."""
    got: list[Any] = []

    def onExpression(e: Any) -> None:
        got.append(e)
        d.paused = True

    d = Decoder(onExpression)
    d.feed(encode(1) + encode(2) + encode(3)[:1])
    assert got == [1]
    d.feed(encode(3)[1:])
    assert got == [1]
    d.resume()
    assert got == [1, 2]
    d.resume()
    assert got == [1, 2, 3]
    d.resume()
    assert got == [1, 2, 3] and d.pending == 0


def test_refuseFromOutside() -> None:
    """An owner whose shared budget ran out refuses the message under way."""
    b = Budgeted()
    b.d.feed(encode([b"message", 9, [1, 2, 3]])[:-2])
    b.d.refuse(Refusal("items", 123))
    assert b.refused == [("items", [b"message", 9])]
    b.d.feed(encode([b"message", 9, [1, 2, 3]])[-2:] + encode([b"message", 10]))
    assert b.skipped == [[b"message", 9]]
    assert b.got == [[b"message", 10]]


def test_skippingRunsOfScalarsFindsTheirListsEnds() -> None:
    """
    Runs of scalar tokens are passed over in bulk; lists that end inside a
    run end where they should, however the bytes are cut.
    """
    inner = [[0, 1, 127, 128, 300, -1, b"", [], 0.5] * (i % 7 + 1) for i in range(3000)]
    refusedMessage = [b"message", 3, b"root", b"echo", 1, [b"tuple", inner]]
    data = encode(refusedMessage) + encode([b"message", 4, [1, [2, 3]]])
    for size in (1, 7, 4096, len(data)):
        b = Budgeted(maxItems=1000)
        for i in range(0, len(data), size):
            b.d.feed(data[i : i + size])
        assert b.skipped == [[b"message", 3, b"root", b"echo", 1]]
        assert b.got == [[b"message", 4, [1, [2, 3]]]]
        assert (b.d.pending, b.d.skipping) == (0, False)


def test_encodeLimitIsCheckedBeforeJoining() -> None:
    """One string repeated many times is refused by its total, not built."""
    big = b"x" * 600_000
    with pytest.raises(BananaError, match="too long to send"):
        encode([big] * 1000, limit=16 * 1024 * 1024)  # 600 MB if joined
    assert len(encode([big] * 20, limit=16 * 1024 * 1024)) > 12_000_000
