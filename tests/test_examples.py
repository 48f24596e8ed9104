"""
The examples work: the README's tour end to end (a server process and a
client), and the example application's own tests (examples/test_users.py,
in memory with aurora.testing), which the README quotes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")

# The example's tests import its modules as a user's would, from their directory.
if EXAMPLES not in sys.path:
    sys.path.append(EXAMPLES)

from test_users import UserManagerTests  # noqa: E402,F401  (collected here by pytest)


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


def test_readmeTestingExampleIsTheExamplesTest():
    """The README's "Testing your application" code is examples/test_users.py, verbatim."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme.split("\n## Testing your application\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert blocks, "no python block in the README's Testing section"
    with open(os.path.join(EXAMPLES, "test_users.py"), encoding="utf-8") as f:
        source = f.read()
    for block in blocks:
        assert block in source, f"not in examples/test_users.py:\n{block}"
