"""
A faster banana codec, byte-for-byte compatible with Twisted's for the "pb"
dialect.

Stock C{twisted.spread.banana.Banana.dataReceived} walks the buffer byte by
byte in Python and copies what is left of the buffer after every token, so a
message of n tokens costs O(n^2); its encoder calls C{write} once per token.
L{Decoder} reads tokens at an offset into one buffer and only joins chunks
once a token can complete; L{encode} appends to a list and joins once.

Differences from stock, all on input stock also refuses or cannot produce:

  - After L{Decoder.feed} raises, the decoder's state is unspecified (stock
    keeps a half-consumed buffer too); call L{Decoder.reset} or discard it.
  - Stock fails an C{assert} when fed an empty chunk while bytes are pending;
    L{Decoder.feed} accepts empty chunks.
  - Both encoders recurse per nesting level, but not with the same number of
    frames, so the nesting depth at which C{RecursionError} ends encoding
    differs.  Neither decoder recurses.
  - An exception from C{onExpression} propagates out of L{Decoder.feed} and
    leaves the decoder consistent: the bytes after that expression stay
    pending for the next feed.  Stock would decode the last token again.
  - When L{encodeInto} raises, C{out} holds the tokens encoded so far.
"""

from __future__ import annotations

import re
import struct
import sys
from typing import Any, Callable, Mapping

from twisted.python.reflect import fullyQualifiedName
from twisted.spread import banana
from twisted.spread.banana import BananaError

__all__ = ["Decoder", "Refusal", "encode", "encodeInto", "listHeader", "PB_OUTGOING", "PB_INCOMING"]

PB_OUTGOING: dict[bytes, int] = dict(banana.Banana.outgoingVocabulary)
PB_INCOMING: dict[int, bytes] = dict(banana.Banana.incomingVocabulary)

_LIST, _INT, _STRING, _NEG, _FLOAT, _LONGINT, _LONGNEG, _VOCAB = range(0x80, 0x88)

# Any byte with the high bit set ends a prefix.
_TYPE_BYTE = re.compile(rb"[\x80-\xff]")
_DOUBLE = struct.Struct("!d")

# The encoder's int ranges are those of stock's default prefix limit (64
# bytes); a peer with that limit could not decode a larger int anyway.
_ENCODE_PREFIX_LIMIT = 64
_LARGEST_LONG = 2 ** (_ENCODE_PREFIX_LIMIT * 7) - 1
_SMALLEST_LONG = -_LARGEST_LONG
_LARGEST_INT = 2**31 - 1
_SMALLEST_INT = -(2**31)


def _b128(n: int) -> bytes:
    """The base-128, least significant digit first, prefix for n >= 0."""
    if n < 0x80:
        return bytes((n,))
    digits = bytearray()
    while n:
        digits.append(n & 0x7F)
        n >>= 7
    return bytes(digits)


def _b128decode(buf: bytes, start: int, stop: int) -> int:
    num = 0
    for i in range(stop - 1, start - 1, -1):
        num = (num << 7) | buf[i]
    return num


class Refusal(Exception):
    """
    Why L{Decoder} refused the message it was decoding.

    @ivar kind: C{"bytes"}, C{"items"} or C{"depth"}: the budget crossed;
        C{"pool"}: a budget shared with other decoders (see L{Decoder.refuse}).
    @ivar limit: that budget.
    """

    def __init__(self, kind: str, limit: int) -> None:
        super().__init__(kind, limit)
        self.kind = kind
        self.limit = limit

    def __str__(self) -> str:
        if self.kind == "bytes":
            return f"a message over {self.limit} bytes"
        if self.kind == "items":
            return f"a message of over {self.limit} items"
        if self.kind == "pool":
            return ("a message while the budget shared by all connections for "
                    f"messages in progress ({self.limit}) is in use")
        return f"a message nested over {self.limit} levels deep"


# Skipping a refused message keeps one count per open list: bound how many.
_MAX_SKIP_DEPTH = 10_000
# Scalar tokens with at most a 2-byte prefix, and empty lists and strings:
# complete in themselves, so a run of them is passed over in bulk.  Matched
# at most this many bytes at a time, so that a list ending inside a run
# costs a rescan of no more than that.
_SCALAR_RUN = re.compile(rb"(?:[\x00-\x7f]{0,2}[\x81\x83\x85\x86\x87]|[\x80\x82])+")
_RUN_WINDOW = 65536
_LOW_BYTES = bytes(range(0x80))


class Decoder:
    """
    An incremental banana decoder that holds each message to a budget.

    Feed it bytes as they arrive; it calls C{onExpression} with each complete
    top-level expression, in order.  Lists decode as lists, strings as bytes,
    floats as floats, VOCAB tokens through C{vocabulary}.

    Each top-level expression (a I{message}) may take at most C{maxBytes}
    bytes, C{maxItems} items (the declared lengths of its lists, summed:
    what decoding it allocates, charged before anything is built) and
    C{maxDepth} levels of nesting.  A message that crosses one is refused
    at that moment: the lists built so far are dropped and C{onRefused(why,
    head)} is called with a L{Refusal} and the message's first items decoded
    so far (e.g. C{[b"message", 7]}).  If it returns True, the rest of the
    message is skipped without being built (banana's length prefixes make
    that cheap) and C{onSkipped(head)} is called when it has passed; if it
    returns False, the decoder stops (see L{stopped}).  A message over
    C{maxBytes} cannot be skipped: skipping is for messages within the
    byte budget that would build too much.

    @ivar stopped: set it to C{True} inside C{onExpression} to make L{feed}
        return at once, dropping the rest of its input and anything fed later
        (until L{reset}).
    @ivar paused: set it to C{True} inside C{onExpression} to make L{feed}
        return after that expression, keeping the rest of its input (and
        whatever is fed later) until L{resume}.
    @ivar prefixLimit: the longest prefix accepted, in bytes.
    @ivar sizeLimit: the longest list or string accepted.
    """

    def __init__(
        self,
        onExpression: Callable[[Any], None],
        *,
        prefixLimit: int = 64,
        sizeLimit: int = banana.SIZE_LIMIT,
        vocabulary: Mapping[int, bytes] = PB_INCOMING,
        maxBytes: int = sys.maxsize,
        maxItems: int = sys.maxsize,
        maxDepth: int = sys.maxsize,
        onRefused: Callable[[Refusal, list[Any]], bool] | None = None,
        onSkipped: Callable[[list[Any]], None] | None = None,
    ) -> None:
        self.onExpression = onExpression
        self.prefixLimit = prefixLimit
        self.sizeLimit = sizeLimit
        self.vocabulary = vocabulary
        self.maxBytes = maxBytes
        self.maxItems = maxItems
        self.maxDepth = maxDepth
        self.onRefused = onRefused
        self.onSkipped = onSkipped
        self._feeding = False
        self._starved = False
        self.reset()

    def reset(self) -> None:
        """Drop all buffered bytes and open lists; clear L{stopped} and L{paused}."""
        self.stopped = False
        self.paused = False
        # Unconsumed input is _buf[_pos:] followed by the chunks in _more.
        self._buf = b""
        self._pos = 0
        self._more: list[bytes | memoryview] = []
        self._moreLen = 0
        # How many unconsumed bytes the first incomplete token needs before
        # decoding can make progress: until then feed only collects chunks,
        # so a large string arriving in many chunks is joined once.
        self._need = 0
        # Open lists as (items so far, declared length), innermost last.
        self._stack: list[tuple[list[Any], int]] = []
        # The message being decoded: bytes consumed by its tokens in
        # earlier feeds, and the items its lists declared so far.
        self._consumed = 0
        self._items = 0
        # While skipping a refused message: the items left in each open
        # list (innermost last), string bytes still to pass over, and what
        # onSkipped is told.
        self._skip: list[int] | None = None
        self._skipBytes = 0
        self._head: list[Any] = []

    @property
    def depth(self) -> int:
        """The number of lists opened and not yet complete."""
        return len(self._stack)

    @property
    def pending(self) -> int:
        """The number of bytes received but not yet decoded."""
        return len(self._buf) - self._pos + self._moreLen

    @property
    def messageBytes(self) -> int:
        """Bytes of the message under way received so far (0 between messages)."""
        return self._consumed + self.pending

    @property
    def messageItems(self) -> int:
        """Items the lists of the message under way declared so far."""
        return self._items

    @property
    def skipping(self) -> bool:
        """Whether a refused message is being passed over."""
        return self._skip is not None

    def resume(self) -> None:
        """Clear L{paused} and decode what was kept."""
        self.paused = False
        if not self._feeding and not self.stopped:
            self.feed(b"")

    def refuse(self, why: Refusal) -> None:
        """
        Refuse the message under way from outside the decoder (a budget
        shared with other decoders ran out), as if it had crossed its own.
        """
        if self._skip is None and not self.stopped and \
                (self._stack or self.pending):
            self._refuse(why, None)

    def _refuse(self, why: Refusal, opening: int | None) -> bool:
        """
        Drop what the message built; True if the rest is to be skipped.
        C{opening} is the length of a list whose header was just read, to
        be skipped with the rest.
        """
        stack = self._stack
        head = list(stack[0][0][:5]) if stack else []
        counts = [size - len(items) for items, size in stack]
        stack.clear()
        self._items = 0
        skip = False
        if self.onRefused is not None:
            # Over the byte budget the rest is never skipped, whatever the
            # owner answers.
            skip = self.onRefused(why, head) and why.kind != "bytes"
        if not skip or self.stopped:
            self.stopped = True
            return False
        if opening is not None:
            counts.append(opening)
        self._skip = counts
        self._head = head
        return True

    def feed(self, chunk: bytes) -> None:
        """
        Decode as much as possible.

        @raise BananaError: a prefix longer than C{prefixLimit}, or a list or
            string longer than C{sizeLimit}.
        @raise NotImplementedError: an invalid type byte.
        @raise KeyError: a VOCAB token not in C{vocabulary}.

        @param chunk: bytes (a bytearray is kept, not copied, until a token
            it completes is decoded).
        """
        if self.stopped:
            return
        if self._skipBytes and chunk:
            # The rest of a refused message's string: pass over it unread.
            n = min(self._skipBytes, len(chunk))
            self._skipBytes -= n
            if self._skip is not None:
                self._consumed += n
            chunk = chunk[n:]
            if self._skipBytes:
                self._checkBytes()
                return
        more = self._more
        if chunk:
            more.append(chunk)
            self._moreLen += len(chunk)
        if self.paused or \
                len(self._buf) - self._pos + self._moreLen < self._need:
            # (A string's bytes were held to the budget at its header.)
            return
        if self._pos:
            more.insert(0, memoryview(self._buf)[self._pos :])
        elif self._buf:
            more.insert(0, self._buf)
        buf = b"".join(more)
        more.clear()
        self._moreLen = 0
        self._buf = buf
        self._pos = 0
        self._need = 0
        self._feeding = True
        try:
            pos = 0
            end = len(buf)
            while pos < end and not self.stopped and not self.paused:
                # Each returns when it is done with the buffer, starved (a
                # token not yet whole), or the mode changed.
                self._starved = False
                if self._skip is not None:
                    pos = self._skipSome(buf, pos, end)
                else:
                    pos = self._decode(buf, pos, end)
                if self._starved:
                    break
            if self.stopped:
                self._buf = b""
                self._pos = 0
                self._stack.clear()
                return
            if pos < end:
                self._buf = buf[pos:] if pos else buf
            else:
                self._buf = b""
            self._pos = 0
        finally:
            self._feeding = False
        self._checkBytes()

    def _checkBytes(self) -> None:
        if self.stopped or self.paused:
            return
        if self._consumed + self.pending > self.maxBytes and \
                (self._stack or self._skip is not None or self.pending):
            self._refuse(Refusal("bytes", self.maxBytes), None)

    def _decode(self, buf: bytes, pos: int, end: int) -> int:
        """Decode from C{pos}; the position reached."""
        stack = self._stack
        # The innermost open list, kept in locals: most tokens go there.
        items, size = stack[-1] if stack else (None, 0)
        prefixLimit = self.prefixLimit
        sizeLimit = self.sizeLimit
        vocabulary = self.vocabulary
        onExpression = self.onExpression
        search = _TYPE_BYTE.search
        # With a limit under 2 the fast paths below could pass a prefix
        # that is too long.
        fast = prefixLimit >= 2
        need = 0
        # Where the message under way started in this buffer: its bytes so
        # far are this plus what earlier feeds consumed of it.
        start = pos - self._consumed
        budget = self.maxBytes
        maxItems = self.maxItems
        maxDepth = self.maxDepth
        declared = self._items
        item: Any  # a token's value: bytes, int, float or a finished list

        while pos < end:
            # Almost every prefix is 0 to 2 bytes: look for the type byte
            # there before resorting to a search.
            c = buf[pos]
            if c & 0x80:
                t = pos
                num = 0
            elif fast and pos + 1 < end and buf[pos + 1] & 0x80:
                t = pos + 1
                num = c
            elif fast and pos + 2 < end and buf[pos + 2] & 0x80:
                t = pos + 2
                num = c | (buf[pos + 1] << 7)
            else:
                m = search(buf, pos, pos + prefixLimit + 1)
                if m is None:
                    if end - pos > prefixLimit:
                        raise BananaError(
                            "Security precaution: more than %d bytes of prefix"
                            % (prefixLimit,)
                        )
                    need = end - pos + 1
                    self._starved = True
                    break
                t = m.start()
                num = _b128decode(buf, pos, t)
            typ = buf[t]

            if typ == _STRING:
                if num > sizeLimit:
                    raise BananaError("Security precaution: String too long.")
                stop = t + 1 + num
                if stop - start > budget:
                    self._items = declared
                    self._consumed = 0
                    self._refuse(Refusal("bytes", budget), None)
                    return pos
                if stop > end:
                    need = stop - pos
                    self._starved = True
                    break
                item = buf[t + 1 : stop]
                pos = stop
            elif typ == _VOCAB:
                item = vocabulary[num]
                pos = t + 1
            elif typ == _INT or typ == _LONGINT:
                item = num
                pos = t + 1
            elif typ == _LIST:
                if num > sizeLimit:
                    raise BananaError("Security precaution: List too long.")
                pos = t + 1
                declared += num
                if declared > maxItems or len(stack) >= maxDepth or \
                        pos - start > budget:
                    if pos - start > budget:
                        self._refuse(Refusal("bytes", budget), None)
                        return pos
                    why = Refusal("items", maxItems) if declared > maxItems \
                        else Refusal("depth", maxDepth)
                    self._items = declared
                    self._consumed = pos - start
                    if self._refuse(why, num if num else None) and not num \
                            and self._skip is not None and _passItem(self._skip):
                        self._skipDone()
                    return pos
                if num:
                    items = []
                    size = num
                    stack.append((items, size))
                    continue
                item = []
            elif typ == _NEG or typ == _LONGNEG:
                item = -num
                pos = t + 1
            elif typ == _FLOAT:
                # Stock reads (and limits) a prefix here but ignores it.
                stop = t + 9
                if stop > end:
                    need = stop - pos
                    self._starved = True
                    break
                item = _DOUBLE.unpack_from(buf, t + 1)[0]
                pos = stop
            else:
                raise NotImplementedError(f"Invalid Type Byte {bytes((typ,))!r}")

            # Completing the innermost list may complete its parents too.
            while items is not None:
                items.append(item)
                if len(items) < size:
                    break
                stack.pop()
                item = items
                items, size = stack[-1] if stack else (None, 0)
            else:
                if pos - start > budget:
                    self._refuse(Refusal("bytes", budget), None)
                    return pos
                # Keep pending right while the owner looks.
                self._buf = buf
                self._pos = pos
                self._consumed = 0
                self._items = declared = 0
                start = pos
                onExpression(item)
                if self.stopped or self.paused:
                    return pos

        self._need = need
        self._items = declared
        self._consumed = pos - start
        return pos

    def _skipSome(self, buf: bytes, pos: int, end: int) -> int:
        """
        Pass over a refused message's tokens from C{pos} without building
        them.  Runs of scalar tokens (the cheapest to send, so the likeliest
        flood) are counted in bulk, at C speed.
        """
        counts = self._skip
        assert counts is not None
        start = pos
        prefixLimit = self.prefixLimit
        scalars = _SCALAR_RUN.match
        while pos < end:
            m = scalars(buf, pos, min(end, pos + _RUN_WINDOW))
            if m is not None:
                stop = m.end()
                k = _tokens(buf, pos, stop)
                want = counts[-1]
                if k < want:
                    counts[-1] -= k
                    pos = stop
                    continue
                # The innermost list ends inside the run: find where.
                if k == stop - pos:  # all one-byte tokens
                    pos += want
                else:
                    lo, hi = pos, stop
                    while lo < hi:
                        mid = (lo + hi) // 2
                        if _tokens(buf, pos, mid) >= want:
                            hi = mid
                        else:
                            lo = mid + 1
                    pos = lo
                if _passItem(counts, done=True):
                    self._consumed += pos - start
                    self._skipDone()
                    return pos
                continue
            token = pos
            c = buf[pos]
            if c & 0x80:
                t, num = pos, 0
            elif pos + 1 < end and buf[pos + 1] & 0x80:
                t, num = pos + 1, c
            else:
                found = _TYPE_BYTE.search(buf, pos, pos + prefixLimit + 1)
                if found is None:
                    if end - pos > prefixLimit:
                        raise BananaError(
                            "Security precaution: more than %d bytes of prefix"
                            % (prefixLimit,))
                    self._starved = True
                    break
                t = found.start()
                num = _b128decode(buf, pos, t)
            typ = buf[t]
            pos = t + 1
            if typ == _STRING:
                if num > self.sizeLimit:
                    raise BananaError("Security precaution: String too long.")
                if self._consumed + pos - start + num > self.maxBytes:
                    self._skip = None
                    self.stopped = True
                    if self.onRefused is not None:
                        self.onRefused(Refusal("bytes", self.maxBytes), self._head)
                    return pos
                if pos + num > end:
                    # Passed over as it arrives (see feed), never buffered.
                    self._skipBytes = pos + num - end
                    pos = end
                else:
                    pos += num
            elif typ == _FLOAT:
                if pos + 8 > end:
                    pos = token  # read it whole next time
                    self._starved = True
                    break
                pos += 8
            elif typ == _LIST:
                if num > self.sizeLimit:
                    raise BananaError("Security precaution: List too long.")
                if num:
                    if len(counts) >= _MAX_SKIP_DEPTH:
                        self._skip = None
                        self.stopped = True
                        if self.onRefused is not None:
                            self.onRefused(Refusal("depth", _MAX_SKIP_DEPTH), self._head)
                        return pos
                    counts.append(num)
                    continue
            elif typ not in (_INT, _LONGINT, _NEG, _LONGNEG, _VOCAB):
                raise NotImplementedError(f"Invalid Type Byte {bytes((typ,))!r}")
            # One item of the innermost list passed; lists it completes, too.
            counts[-1] -= 1
            if not counts[-1]:
                if _passItem(counts, done=True):
                    self._consumed += pos - start
                    self._skipDone()
                    return pos
        self._consumed += pos - start
        return pos

    def _skipDone(self) -> None:
        head, self._head = self._head, []
        self._skip = None
        self._consumed = 0
        self._items = 0
        if self.onSkipped is not None:
            self.onSkipped(head)


def _tokens(buf: bytes, start: int, stop: int) -> int:
    """How many tokens end in C{buf[start:stop]}: one per byte with the high bit."""
    return len(buf[start:stop].translate(None, _LOW_BYTES))


def _passItem(counts: list[int], done: bool = False) -> bool:
    """
    One item of the innermost list passed (or, with C{done}, that list is
    already complete): True if that ends the message.
    """
    if done:
        counts.pop()
    while counts:
        counts[-1] -= 1
        if counts[-1]:
            return False
        counts.pop()
    return True


def listHeader(n: int) -> bytes:
    """What precedes the encodings of the C{n} items of a list."""
    return _b128(n) + b"\x80"


def _intToken(n: int) -> bytes:
    if n < _SMALLEST_LONG or n > _LARGEST_LONG:
        raise BananaError("int is too large to send (%d)" % (n,))
    if n < _SMALLEST_INT:
        return _b128(-n) + b"\x86"
    if n < 0:
        return _b128(-n) + b"\x83"
    if n <= _LARGEST_INT:
        return _b128(n) + b"\x81"
    return _b128(n) + b"\x85"


_CACHED = 1024
_SMALL_INTS = [_intToken(i) for i in range(_CACHED)]
_STRING_HEADERS = [_b128(i) + b"\x82" for i in range(_CACHED)]
_LIST_HEADERS = [listHeader(i) for i in range(_CACHED)]


def _vocabTokens(vocabulary: Mapping[bytes, int] | None) -> dict[bytes, bytes]:
    if not vocabulary:
        return {}
    return {word: _b128(n) + b"\x87" for word, n in vocabulary.items()}


_PB_TOKENS = _vocabTokens(PB_OUTGOING)


def _tokensFor(vocabulary: Mapping[bytes, int] | None) -> dict[bytes, bytes]:
    if vocabulary is PB_OUTGOING or vocabulary is banana.Banana.outgoingVocabulary:
        return _PB_TOKENS
    return _vocabTokens(vocabulary)


def encode(obj: Any, *, vocabulary: Mapping[bytes, int] | None = PB_OUTGOING,
           limit: int | None = None) -> bytes:
    """
    Encode C{obj} exactly as stock C{Banana} does in the "pb" dialect.

    @param vocabulary: strings sent as VOCAB tokens; C{None} or empty for
        none (stock's "none" dialect).
    @raise BananaError: C{obj} holds something banana cannot send: a type
        other than list, tuple, int (bool included: it goes as 0 or 1),
        float and bytes; a list, tuple or bytes longer than
        C{banana.SIZE_LIMIT}; an int of more than 448 bits; an encoding over
        C{limit} bytes (checked before the bytes are joined).
    """
    out: list[bytes] = []
    _encode(obj, out, _tokensFor(vocabulary))
    if limit is not None and len(out) > 64:
        # Parts may repeat one object many times (a string referenced from
        # many places): sum their sizes before joining them into one.
        size = sum(map(len, out))
        if size > limit:
            raise BananaError(f"message too long to send ({size} bytes, over {limit})")
    return b"".join(out)


def encodeInto(
    obj: Any, out: list[bytes], *, vocabulary: Mapping[bytes, int] | None = PB_OUTGOING
) -> None:
    """Like L{encode}, appending the encoding's parts to C{out}."""
    _encode(obj, out, _tokensFor(vocabulary))


def _encode(obj: Any, out: list[bytes], tokens: dict[bytes, bytes]) -> None:
    t = type(obj)
    if t is list or t is tuple:
        _encodeList(obj, out, tokens)
    elif t is bytes and obj in tokens:
        out.append(tokens[obj])
    elif isinstance(obj, (list, tuple)):
        _encodeList(obj, out, tokens)
    elif isinstance(obj, int):
        if t is int and 0 <= obj < _CACHED:
            out.append(_SMALL_INTS[obj])
        else:
            out.append(_intToken(int(obj)))
    elif isinstance(obj, float):
        out.append(b"\x84" + _DOUBLE.pack(obj))
    elif isinstance(obj, bytes):
        if obj in tokens:
            out.append(tokens[obj])
            return
        n = len(obj)
        if n > banana.SIZE_LIMIT:
            raise BananaError("byte string is too long to send (%d)" % (n,))
        out.append(_STRING_HEADERS[n] if n < _CACHED else _b128(n) + b"\x82")
        out.append(obj if t is bytes else bytes(obj))
    else:
        # The type only: a repr may be long, or hold a memory address.
        raise BananaError(f"Banana cannot send {fullyQualifiedName(type(obj))} objects")


def _encodeList(obj: list[Any] | tuple[Any, ...], out: list[bytes],
                tokens: dict[bytes, bytes]) -> None:
    n = len(obj)
    if n > banana.SIZE_LIMIT:
        raise BananaError("list/tuple is too long to send (%d)" % (n,))
    append = out.append
    append(_LIST_HEADERS[n] if n < _CACHED else listHeader(n))
    # The common element types inline, rather than a call each.
    for elem in obj:
        t = type(elem)
        if t is bytes:
            token = tokens.get(elem)
            if token is not None:
                append(token)
                continue
            n = len(elem)
            if n < _CACHED:
                append(_STRING_HEADERS[n])
                append(elem)
                continue
        elif t is int and 0 <= elem < _CACHED:
            append(_SMALL_INTS[elem])
            continue
        elif t is list or t is tuple:
            _encodeList(elem, out, tokens)
            continue
        _encode(elem, out, tokens)


def _benchmark() -> None:
    import timeit
    from io import BytesIO

    class Stock(banana.Banana):
        def expressionReceived(self, obj: Any) -> None:
            pass

    stock = Stock()
    stock.connectionMade()
    stock.currentDialect = b"pb"  # what choosing the dialect sets
    sink = BytesIO()
    # sendEncoded only calls transport.write.
    stock.transport = sink  # type: ignore[assignment]

    def stockEncode(obj: Any) -> None:
        sink.seek(0)
        sink.truncate()
        stock.sendEncoded(obj)

    decoder = Decoder(lambda obj: None)
    cases = {
        "small PB call": [b"message", 7, b"root", b"echo", 1,
                          [b"tuple", 1, [b"unicode", b"hello"]], [b"dictionary"]],
        "64 KiB string": [b"message", 8, b"root", b"put", 1,
                          [b"tuple", 1, b"x" * 65536], [b"dictionary"]],
        "1000 items": [b"list"] + [i if i % 2 else b"item%d" % i for i in range(999)],
    }

    def timed(f: Callable[[], object]) -> float:
        runs, total = timeit.Timer(f).autorange()
        best = min(timeit.Timer(f).repeat(5, runs))
        return best / runs * 1e6

    print(f"{'case':<32}{'stock µs':>12}{'aurora µs':>12}{'speed-up':>10}")
    for name, obj in cases.items():
        data = encode(obj)
        stockEncode(obj)
        assert data == sink.getvalue()
        rows = [
            ("encode", lambda: stockEncode(obj), lambda: encode(obj)),
            ("decode", lambda: stock.dataReceived(data), lambda: decoder.feed(data)),
        ]
        if len(data) > 16384:
            pieces = [data[i : i + 4096] for i in range(0, len(data), 4096)]

            def stockChunks() -> None:
                for p in pieces:
                    stock.dataReceived(p)

            def ourChunks() -> None:
                for p in pieces:
                    decoder.feed(p)

            rows.append(("decode, 4 KiB chunks", stockChunks, ourChunks))
        for what, theirs, ours in rows:
            a, b = timed(theirs), timed(ours)
            print(f"{name + ' ' + what:<32}{a:>12.1f}{b:>12.1f}{a / b:>9.1f}x")


if __name__ == "__main__":
    _benchmark()
