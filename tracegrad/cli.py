"""The ``tracegrad`` command."""

from __future__ import annotations

import argparse
import sys

import tracegrad


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tracegrad",
        description="PyTorch-style autodiff that compiles models to readable NumPy code.",
    )
    parser.add_argument("--version", action="version", version=f"tracegrad {tracegrad.__version__}")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
