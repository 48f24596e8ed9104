"""python -m aurora: the operator's command line (see aurora.cli)."""

from aurora.cli import main

main()
