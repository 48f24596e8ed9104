"""aurora's version: the one place it is written (pyproject.toml reads it)."""

__version__ = "0.1.0"
"""The version of this aurora, as pip and C{aurora.__version__} report it."""
