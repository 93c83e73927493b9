"""`python -m inferencesh`: the command line (see `inferencesh.cli`)."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
