"""``python -m tests.fuzz --programs N --seed S [--constructs a,b] [--groups g,h]``: run N
programs (seeds S..S+N-1), print each failing program's seed, outcome and source, the
refusals' messages with their counts, then the counts. Exits 1 when a program mismatched,
crashed or was invalid."""

from __future__ import annotations

import argparse
import sys
import time

from .campaign import run_seeds
from .constructs import CONSTRUCTS, GROUPS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--programs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--constructs", help=f"comma-separated, of: {', '.join(CONSTRUCTS)}")
    parser.add_argument("--groups", help=f"comma-separated, of: {', '.join(GROUPS)}")
    parser.add_argument("--quiet", action="store_true", help="no program sources")
    args = parser.parse_args(argv)
    enabled = _enabled(parser, args)
    start = time.perf_counter()
    report = run_seeds(range(args.seed, args.seed + args.programs), enabled)
    for seed, program, outcome in report.failures:
        print(f"--- seed {seed} {outcome.kind}: {outcome.detail}")
        if not args.quiet:
            print(program.source)
    for message, count in report.refusals.most_common():
        print(f"refused {count}x: {message}")
    print(report.summary(), f"in {time.perf_counter() - start:.1f} s")
    return 1 if report.failures else 0


def _enabled(parser, args) -> list[str] | None:
    names = args.constructs.split(",") if args.constructs else []
    for group in args.groups.split(",") if args.groups else []:
        if group not in GROUPS:
            parser.error(f"unknown group {group!r}; groups: {', '.join(GROUPS)}")
        names += GROUPS[group]
    unknown = [n for n in names if n not in CONSTRUCTS]
    if unknown:
        parser.error(f"unknown constructs {unknown}; constructs: {', '.join(CONSTRUCTS)}")
    return names or None


if __name__ == "__main__":
    sys.exit(main())
