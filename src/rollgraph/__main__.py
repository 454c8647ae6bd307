"""`python -m rollgraph` runs the CLI."""

from rollgraph.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
