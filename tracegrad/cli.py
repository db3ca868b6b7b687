"""The ``tracegrad`` command: look at what the compiler makes of your model, and a demo.

    tracegrad dump FILE.py:NAME --format text|json|code|dot [--passes a,b | --no-passes]
    tracegrad viz FILE.py:NAME -o graph.html|graph.svg|graph.dot
    tracegrad explain FILE.py:NAME
    tracegrad demo [--epochs N] [--threads N] [-o tracegrad-demo.html]
    tracegrad bench [ARGS...]       (python -m benchmarks ARGS of this source checkout)

FILE.py defines NAME (an nn.Module instance or a function) and ``example_inputs``, a tuple of
tensors or arrays to trace with; it may import modules beside it. Mistakes (a bad flag, an
unknown picture suffix or TRACEGRAD_LOGS name, a failing model) are reported in one line,
without a traceback, with status 2. ``TRACEGRAD_LOGS`` (see ``tracegrad.logs``) prints stages
as they run, ``timing`` how long each took.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np

import tracegrad
from tracegrad import viz
from tracegrad.compile import compile as compile_model
from tracegrad.demo import run_demo
from tracegrad.logs import LOG_KINDS, unknown_log_kinds
from tracegrad.tensor import wrap


class UsageError(Exception):
    """A mistake in what the user asked for: reported in one line."""


class OneLineParser(argparse.ArgumentParser):
    """Reports a bad flag or argument in one line with status 2, as other mistakes are."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def load_target(spec: str):
    """``FILE.py:NAME`` -> (the object NAME, its example inputs as tensors)."""
    path, sep, name = spec.rpartition(":")
    if not sep or not path or not name:
        raise UsageError(f"expected FILE.py:NAME, got {spec!r}")
    if not Path(path).is_file():
        raise UsageError(f"no such file: {path}")
    folder = str(Path(path).resolve().parent)
    if folder not in sys.path:  # its imports of modules beside it, as `python FILE.py` has
        sys.path.insert(0, folder)
    try:
        namespace = runpy.run_path(path, run_name="__tracegrad_target__")
    except Exception as exc:  # the user's file failed: say how, in one line
        raise UsageError(f"running {path} failed: {type(exc).__name__}: {exc}") from None
    if name not in namespace:
        raise UsageError(f"{path} defines no {name!r}")
    if "example_inputs" not in namespace:
        raise UsageError(f"{path} defines no example_inputs (a tuple of tensors or arrays)")
    inputs = namespace["example_inputs"]
    inputs = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    return namespace[name], [wrap(a) if isinstance(a, np.ndarray) else a for a in inputs]


def compiled(spec: str, passes="default"):
    """Compile NAME and run it once on the example inputs (which generates its code)."""
    target, inputs = load_target(spec)
    if not callable(target):
        raise UsageError(f"{spec} is a {type(target).__name__}, not a module or a function")
    program = compile_model(target, passes=passes)
    try:
        program(*inputs)
    except (tracegrad.TraceError, tracegrad.ShapeError, tracegrad.DTypeError):
        raise
    except Exception as exc:  # the user's model failed on its example inputs
        raise UsageError(f"calling {spec} failed: {type(exc).__name__}: {exc}") from None
    return program


def _passes(args):
    if args.no_passes:
        return None
    return args.passes.split(",") if args.passes else "default"


def _headed(views, args) -> list:
    """The views with titles saying which passes made them: "(optimized)" only when the
    default pipeline ran."""
    if args.no_passes:
        made_by = "(no passes)"
    elif args.passes:
        made_by = f"(passes {args.passes})"
    else:
        return views
    return [(title.replace("(optimized)", made_by), graph) for title, graph in views]


def cmd_dump(args) -> str:
    program = compiled(args.target, _passes(args))
    views = _headed(program.views(), args)
    if args.format == "code":
        return program.code
    if args.format == "dot":
        return viz.to_dot(views)
    if args.format == "json":
        return json.dumps({title: json.loads(g.to_json()) for title, g in views}, indent=1)
    return "\n\n".join(f"# {title}\n{graph}" for title, graph in views)


def cmd_viz(args) -> str:
    suffix = Path(args.output).suffix.lower()
    if suffix not in viz.SUFFIXES:  # said before the model is compiled
        known = ", ".join(viz.SUFFIXES)
        raise UsageError(f"cannot tell the picture format from {args.output!r}: use {known}")
    program = compiled(args.target, _passes(args))
    picture = program.picture(views=_headed(program.views(), args))
    path = viz.render(path=args.output, **picture)  # (as cm.visualize draws it)
    return f"wrote {path}"


def cmd_explain(args) -> str:
    return compiled(args.target, _passes(args)).explain()


def cmd_demo(args) -> str | int:
    if args.threads is not None and args.threads < 1:
        raise UsageError(f"--threads needs at least 1 thread, got {args.threads}")
    summary = run_demo(
        epochs=args.epochs, picture=args.output, batch_size=args.batch_size, threads=args.threads
    )
    return summary or 0  # under mpiexec, ranks other than 0 print nothing


def cmd_bench(args) -> int:
    """``python -m benchmarks`` in its own process (it sets one thread before NumPy loads)
    from the source checkout this tracegrad is installed from."""
    root = Path(tracegrad.__file__).resolve().parents[1]
    if not (root / "benchmarks" / "__main__.py").is_file():
        raise UsageError(
            f"the benchmarks live in a source checkout (git clone, then pip install -e .); "
            f"there is no benchmarks/ folder in {root}"
        )
    command = [sys.executable, "-m", "benchmarks", *args.arguments]
    return subprocess.run(command, cwd=root).returncode


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="tracegrad",
        description="PyTorch-style autodiff that compiles models to readable NumPy code.",
        epilog=f"TRACEGRAD_LOGS={','.join(LOG_KINDS)} or all prints those stages as they run.",
    )
    parser.add_argument("--version", action="version", version=f"tracegrad {tracegrad.__version__}")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser
    )

    def target_command(name, help_text, fn):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("target", metavar="FILE.py:NAME", help="a module or function in a file")
        sub.add_argument("--passes", help="comma-separated passes to run (default: all)")
        sub.add_argument("--no-passes", action="store_true", help="compile without optimizing")
        sub.set_defaults(run=fn)
        return sub

    dump = target_command("dump", "print the graphs, JSON, generated code or DOT", cmd_dump)
    dump.add_argument("--format", choices=["text", "json", "code", "dot"], default="text")
    picture = target_command("viz", "write a picture of the graphs (.html, .svg or .dot)", cmd_viz)
    picture.add_argument("-o", "--output", required=True, help="where to write the picture")
    target_command("explain", "report what the compiler did: passes, memory, guards", cmd_explain)

    demo = commands.add_parser(
        "demo",
        help="train a small model on handwritten digits",
        description="Train an MLP on the bundled 8x8 digits with a "
        "compiled training step, then write a picture of its graphs.",
    )
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--batch-size", type=int, default=64)
    demo.add_argument("-o", "--output", default="tracegrad-demo.html")
    demo.add_argument(
        "--threads", type=int, help="BLAS threads (default: the process's, one per core)"
    )
    demo.set_defaults(run=cmd_demo)

    bench = commands.add_parser(
        "bench",
        help="time the four workloads against a hand-written NumPy step (python -m benchmarks)",
        add_help=False,  # --help goes to the benchmarks, which list their options
    )
    bench.set_defaults(run=cmd_bench)
    return parser


def _check_logs() -> None:
    unknown = unknown_log_kinds()
    if unknown:
        raise UsageError(
            f"TRACEGRAD_LOGS names no log {', '.join(map(repr, unknown))}: use "
            f"{', '.join(LOG_KINDS)} or all"
        )


def main(argv=None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if args.command == "bench":
        args.arguments = unknown  # all of them are the benchmarks' own options
    elif unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        _check_logs()
        result = args.run(args)
    except (UsageError, tracegrad.TraceError, tracegrad.ShapeError, tracegrad.DTypeError) as exc:
        message = " ".join(str(exc).split())
        print(f"tracegrad: error: {message}", file=sys.stderr)
        return 2
    if isinstance(result, int):  # a command run in its own process: its exit status
        return result
    return _print_quietly(result)


def _print_quietly(text: str) -> int:
    """Print the result; a reader that stops early (``tracegrad dump ... | head``) ends the
    command quietly, as other command line tools do."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout again at exit: point it at nothing so that flush is quiet too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
