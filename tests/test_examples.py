"""The README's tour runs end to end: a server process and a client."""

from __future__ import annotations

import os
import subprocess
import sys

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(__file__)), "examples")


def test_tourRuns():
    result = subprocess.run(
        [sys.executable, "tour.py"], cwd=EXAMPLES, capture_output=True,
        text=True, timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "provides IUserManager: True" in out
    assert "isinstance User: True" in out
    assert "['alice', 'bob', 'carol']" in out
    assert "changed signal on the mirror: online False -> True" in out
    assert "UnknownUser(no user called 'nobody')" in out
    assert "done: server stopped" in out
