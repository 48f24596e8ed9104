"""
What C{pip install .} (C{make install}) puts in place: the package is typed,
its version is the one in C{aurora/_version.py}, its licence is declared,
and the C{aurora} command and the twistd plugins are installed with it.
"""

import sysconfig
from importlib import metadata

import aurora


def _dist() -> metadata.Distribution:
    # The installed one: an aurora_registry.egg-info that a build leaves in
    # the working tree (on sys.path here) would be found first otherwise.
    site = sysconfig.get_paths()["purelib"]
    [dist] = metadata.distributions(name="aurora-registry", path=[site])
    return dist


def _installed() -> set[str]:
    return {str(f) for f in _dist().files or []}


def test_versionHasOneSource() -> None:
    assert _dist().version == aurora.__version__


def test_typed() -> None:
    assert "aurora/py.typed" in _installed()


def test_licence() -> None:
    meta = _dist().metadata
    assert meta["License-Expression"] == "MIT"
    assert any(f.endswith("licenses/LICENSE") for f in _installed())


def test_commandAndPlugins() -> None:
    scripts = _dist().entry_points.select(
        group="console_scripts")
    assert [(e.name, e.value) for e in scripts] == [("aurora", "aurora.cli:main")]
    installed = _installed()
    assert "twisted/plugins/aurora_registry.py" in installed
    assert "twisted/plugins/aurora_mtls.py" in installed
    # twisted.plugins is Twisted's namespace: aurora must not shadow it.
    assert "twisted/plugins/__init__.py" not in installed
    assert "twisted/__init__.py" not in installed


def test_whatTheTLSRecipeLeavesIsIgnoredByGit() -> None:
    """The README says so: the recipe's key, certificate and trust/ stay out of git."""
    import os
    import shutil
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if shutil.which("git") is None or not os.path.isdir(os.path.join(root, ".git")):
        import pytest

        pytest.skip("not a git checkout")
    paths = ["examples/key.pem", "examples/cert.pem", "examples/trust/cert.pem"]
    done = subprocess.run(["git", "check-ignore", *paths], cwd=root,
                          capture_output=True, text=True, timeout=30)
    assert done.stdout.split() == paths
