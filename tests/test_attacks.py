"""
Issue #11: hostile peers cannot exhaust a server.

Each test runs one attack from tests/attacks.py against a server process of
its own (tests/attackserve.py) while a bystander process calls getUser every
50 ms, and asserts what the server does about it, measured from outside:
the server process's memory and CPU through /proc, the bystander's longest
wait, the server's JSON log.  `python -m tests.attacks` prints the same
attacks as a table.
"""

from __future__ import annotations

import re

import pytest
import pytest_twisted

from tests import attacks
from tests.attacks import Result

# Peak RSS growth of the server process during an attack (VmHWM after the
# attack minus VmRSS before it), for attacks 1, 3, 4, 7 and 10: what one
# hostile peer may cost the server, whatever it sends.  Before #11 these
# attacks cost 300 MiB to more than 3 GiB.
MAX_GROWTH_MIB = 64

# The bystander (a well-behaved client calling getUser every 50 ms during the
# attack) never waits longer than this for an answer, and no call fails.
MAX_BYSTANDER_WAIT = 2.0

# Attack 3: the server drops a peer that has not read for maxLag seconds;
# the test sets it low to stay short.  Slack: the lag timer starts when the
# server's send buffer fills, and the test polls the socket every 0.1 s.
MAX_LAG = 3
LAG_SLACK = 5.0

# Attack 6: after many wrong passwords on one connection each attempt waits
# (the server's delay grows up to a cap of 2 s); the last attempts take at
# least this long.
SLOW_ATTEMPT = 0.5
LOGIN_TIMEOUT = 160

# Attack 7: idle connections that never answer the server's probe are dropped
# within about twice the idle timeout (plus this slack).  Long enough that
# the connection limit is still full while a late client tries (for 3 s).
IDLE_TIMEOUT = 5
IDLE_SLACK = 1.5

# Attack 10: log lines one misbehaving connection may cause.
MAX_LINES_PER_CONNECTION = 5
MAX_TRACEBACKS = 3


def assertBystanderServed(r: Result) -> None:
    b = r.bystander
    assert "error" not in b, f"the bystander did not report: {b}"
    assert b.get("failures") == 0, f"bystander calls failed during {r.name}: {b}"
    assert b.get("longest") is not None and b["longest"] < MAX_BYSTANDER_WAIT, (
        f"the bystander waited {b.get('longest')} s during {r.name}: {b}")


def assertServed(r: Result, memory: bool = True, bystander: bool = True) -> None:
    """The server survived the attack, kept serving, and stayed small."""
    assert not r.killedAtCap, f"{r.name}: the server passed {attacks.RSS_CAP} bytes"
    assert r.alive, f"{r.name}: the server process died or stopped answering: {r.notes}"
    if memory:
        assert r.peakGrowthMiB < MAX_GROWTH_MIB, (
            f"{r.name}: the server's RSS grew by {r.peakGrowthMiB:.0f} MiB "
            f"(limit {MAX_GROWTH_MIB}): {r.notes}")
    if bystander:
        assertBystanderServed(r)


def errorType(o: dict) -> str | None:
    return None if o["ok"] else o["type"]


@pytest_twisted.ensureDeferred
async def test_attackserveRejectsUnknownOptions():
    """The harness itself: a Server option that does not exist is an error."""
    with pytest.raises(RuntimeError, match="unknown Server option 'noSuchOption'"):
        await attacks.AttackServer.start("--option", "noSuchOption=1")


# -- 1. decode amplification before login ----------------------------------------

@pytest_twisted.ensureDeferred
async def test_attack1_decodeAmplificationWhole():
    """15 MB of one-byte empty lists: refused early, one warning, nothing else."""
    r = await attacks.attack1_whole()
    assertServed(r)
    assert r.details["closed"], "the attacker's connection is still open"
    assert len(r.details["warnings"]) == 1, r.details["attackerLines"]
    assert "dropping the connection" in r.details["warnings"][0]
    assert not [l for l in r.details["attackerLines"] if attacks.isTraceback(l)]


@pytest_twisted.ensureDeferred
async def test_attack1_decodeAmplificationHeld():
    """The same message, never completed, on three connections at once."""
    r = await attacks.attack1_held(hold=10)
    assertServed(r)
    assert r.details["serverRunning"]
    assert all(r.details["closed"]), "an incomplete amplifying message is still held"


@pytest_twisted.ensureDeferred
async def test_attack1_largeMessageOfEmptyLists():
    """640 KB of empty lists in a call: the server and its bystander carry on."""
    r = await attacks.attack1_cpu(repeat=3)
    assertServed(r)


# -- 2. a stall and the heartbeat watchdog --------------------------------------

@pytest_twisted.ensureDeferred
async def test_attack2_stallDoesNotDropHealthyClients():
    """
    A big but legal call keeps the server busy for a second or two; the
    server's watchdog does not declare a client with a 0.5 s heartbeat dead
    for the silence its own stall caused: it reads the pings waiting in the
    socket first.  (The client's own watchdog may give up on the stalled
    server, as it was told to after 0.875 s; then it reconnects.  No bound
    on the bystander here: the stall is legal.)
    """
    r = await attacks.attack2_stall()
    assertServed(r, memory=False, bystander=False)
    assert r.details["answered"], "the big legal call got no answer"
    assert r.details["serverDropLines"] == [], r.details["serverDropLines"]


# -- 3. a caller that never reads ---------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_attack3_neverReadingCallerIsDropped():
    r = await attacks.attack3_neverReads(options={"maxLag": MAX_LAG}, hold=15)
    assert r.details["closedAfter"] is not None, (
        f"the server did not drop a peer that never reads: {r.notes}")
    assert r.details["closedAfter"] <= MAX_LAG + LAG_SLACK, r.notes
    assertServed(r)
    assert r.details["afterDisconnectGrowthMiB"] < MAX_GROWTH_MIB, r.notes


# -- 4. model atoms -----------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_attack4_modelAtomsAreLimited():
    """Model atoms in arguments count against the connection's referenceLimit."""
    r = await attacks.attack4_modelAtoms(batches=(1000,) + (10_000,) * 10)
    answers = r.details["answers"]
    assert answers[0] == "answer", answers  # 1,000 < the default 1,024
    assert answers[1:] == ["aurora.errors.LimitExceeded"] * 10, answers
    assertServed(r)


# -- 5. a relay's allow-list -------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_attack5_relayAllowListCoversReturnedManagers():
    """
    A relay allowing only IUserManager does not hand out an IAdmin that an
    IUserManager method (getAdmin) returns.
    """
    r = await attacks.attack5_relayAllowList()
    assertServed(r, memory=False)
    assert errorType(r.details["direct"]) == "aurora.errors.UnknownInterface"
    got = r.details["getAdmin"]
    assert errorType(got) == "aurora.errors.UnknownInterface", got
    assert "getAdmin" in got["message"], got
    assert "IAdmin" not in got["message"], got


# -- 6. login -------------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_attack6_pipelinedWrongPasswordsDoNotStallOthers():
    r = await attacks.attack6_pipelined(count=60)
    assertServed(r, memory=False)
    assert "answer" not in r.details["answers"]  # no wrong password got in


@pytest.mark.timeout(170)
@pytest_twisted.ensureDeferred
async def test_attack6_repeatedWrongPasswordsSlowDown():
    # loginTimeout is raised for this test: 45 attempts at up to 2 s each
    # take longer than the default 30 s a connection has to log in.
    r = await attacks.attack6_oneConnection(
        options={"loginTimeout": LOGIN_TIMEOUT}, count=45, budget=140)
    assertServed(r, memory=False)
    times = r.details["times"]
    assert len(times) == 45, r.notes
    assert set(r.details["answers"]) == {"aurora.errors.LoginFailed"}, r.details["answers"]
    assert r.details["open"], "the connection was closed after wrong passwords"
    assert min(times[-5:]) >= SLOW_ATTEMPT, [round(t, 3) for t in times]


# -- 7. idle connections ---------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_attack7_idleConnectionsAndTheConnectionLimit():
    r = await attacks.attack7_idle(
        options={"maxConnections": 20, "idleTimeout": IDLE_TIMEOUT})
    d = r.details
    # The bystander and a stock PB client hold two of the 20 places.
    assert d["admitted"] <= 18 and d["admitted"] + d["refused"] == 300, d
    late = d["newClient"]
    assert errorType(late) == "aurora.errors.ConnectionFailed", late
    assert "connection limit" in late["message"], late
    assert d["limitLines"], "the refusal at the connection limit is not logged"
    assert d["idleClosed"] == d["admitted"], (
        f"{d['admitted'] - d['idleClosed']} idle connections not dropped")
    slowest = max(d["idleClosedAfter"])
    assert slowest <= 2 * IDLE_TIMEOUT + IDLE_SLACK, d["idleClosedAfter"]
    assert d["stockConnected"], "a stock PB client that answers was dropped"
    assertServed(r)


# -- 8. relay starvation ---------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_attack8_helloBeforeLoginCannotRaiseTheReferenceLimit():
    r = await attacks.attack8_relayStarvation(models=2000, originLimit=20_000)
    assertServed(r, memory=False)
    greedy = r.details["greedy"]
    assert errorType(greedy) == "aurora.errors.LimitExceeded", greedy
    assert re.search(r"\b1,?024\b", greedy["message"]), greedy
    assert r.details["other"]["ok"], r.details["other"]


# -- 9. a password over plain TCP ------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_attack9_noPasswordOverPlainTCP():
    r = await attacks.attack9_plainPassword()
    assert r.alive
    assert not r.details["passwordSeen"], "the password crossed the wire in clear"
    got = r.details["getRegistry"]
    assert errorType(got) == "aurora.errors.LoginFailed", got
    assert "TLS" in got["message"], got


# -- 10. log flooding ------------------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_attack10_bogusMessagesDoNotFloodTheLog():
    r = await attacks.attack10_bogusMessages()
    lines = r.details["lines"]
    assert len(lines) <= MAX_LINES_PER_CONNECTION, (
        f"{len(lines)} log lines for one connection "
        f"({r.details['logBytes']} bytes)")
    assert r.details["tracebacks"] == 0
    assertServed(r)


@pytest_twisted.ensureDeferred
async def test_attack10_repeatedFailuresAreSummarized():
    # A short interval, so the line that counts what was left out comes soon.
    r = await attacks.attack10_raising(calls=1000, options={"logInterval": 2})
    assert r.details["errors"] == ["aurora.errors.RemoteError"]
    assert r.details["tracebacks"] <= MAX_TRACEBACKS, (
        f"{r.details['tracebacks']} tracebacks for 1,000 identical failures")
    assert any(re.search(r"and \d+ more like it", l) for l in r.details["summaryLines"]), (
        "no 'and N more like it' line")
    assertServed(r)


# -- 11. what reaches the caller --------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_attack11_remoteErrorsDoNotCarrySecrets():
    r = await attacks.attack11_secretInError()
    got = r.details["call"]
    assert errorType(got) == "aurora.errors.RemoteError", got
    assert "RuntimeError" in got["message"], got
    assert "hunter2" not in got["message"], got
    ids = attacks.correlationIds(got["message"])
    assert ids, f"no correlation id in {got['message']!r}"
    logged = [i for i in ids if any(i in line for line in r.details["lines"])]
    assert logged, f"none of {ids} appears in the server's log"


# -- 12. a dangling local reference ------------------------------------------------------

@pytest_twisted.ensureDeferred
async def test_attack12_unknownLocalReferenceIsAnError():
    r = await attacks.attack12_danglingLocal()
    assert r.details["kind"] == "error", r.details
    assert r.details["error"] == "aurora.errors.SerializationError", r.details
