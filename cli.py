"""Thin root entry point: `python cli.py ...` from a checkout runs the costmodel CLI."""
from costmodel.cli.app import main

if __name__ == "__main__":
    main()
