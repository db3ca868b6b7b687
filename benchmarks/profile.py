"""Per-statement timings of a workload's generated training step (the slowest first).

    python -m benchmarks.profile W3            # the optimized whole step
    python -m benchmarks.profile W3 --none     # the step compiled with passes=None

Each statement of the generated function is run on its own (after the whole step ran, so every
value exists), a few times, and timed: a map of where a step spends its time.
"""

from __future__ import annotations

import argparse
import inspect
import timeit

import numpy as np

from benchmarks import workloads


def statements(code: str) -> list[str]:
    """The statements of the generated ``step`` function, without their comments; a row loop
    (a ``for`` line and its indented body) is one statement."""
    lines = code.split("\ndef step(")[1].split("\n")
    signature_end = next(i for i, line in enumerate(lines) if line.endswith("):"))
    body = lines[signature_end + 1 :]  # the signature may wrap over several lines
    result: list[str] = []
    for line in body:
        text = line.split("  #")[0].rstrip()
        stripped = text.strip()
        if stripped.startswith("return"):
            break
        if not stripped or stripped.startswith(("#", "del ")):
            continue
        if line.startswith("        ") and result:  # the body of a row loop
            result[-1] += "\n" + text[4:]
        else:
            result.append(stripped)
    return result


def profile(name: str, unoptimized: bool = False, repeat: int = 3) -> list[tuple[float, str]]:
    setup = workloads.make_setup(workloads.get_workload(name))
    impl = workloads.TracegradImplementation(setup, "none" if unoptimized else "step")
    for i in range(3):
        impl.step(i)
    spec = impl.compiled.latest
    fn = spec.program.functions["step"]
    names = dict(fn.__globals__)
    x, y = impl.batches[0]
    arrays = [x.array, y.array] + [t.array.copy() for t in spec.state()]
    names.update(zip(inspect.signature(fn).parameters, arrays))
    names.setdefault("rng", np.random.default_rng(0))  # steps with dropout take a generator
    rows = []
    for statement in statements(impl.compiled.code):
        exec(statement, names)
        seconds = timeit.timeit(statement, globals=names, number=repeat) / repeat
        rows.append((seconds * 1e3, statement))
    return sorted(rows, reverse=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=sorted(workloads.WORKLOADS))
    parser.add_argument("--none", action="store_true", help="profile the passes=None step")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    rows = profile(args.workload, args.none)
    print(f"{sum(ms for ms, _ in rows):.2f} ms in {len(rows)} statements")
    for ms, statement in rows[: args.top]:
        print(f"{ms:9.3f} ms  {statement.splitlines()[0][:110]}")


if __name__ == "__main__":
    main()
