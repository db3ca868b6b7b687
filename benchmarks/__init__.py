"""tracegrad benchmarks: the workloads of DESIGN.md and more, timed side by side in one run.

Run ``python -m benchmarks`` (``--help`` for the options). One thread unless ``--threads N``:
the BLAS/OpenMP thread counts are set here, before anything imports NumPy (importing this
package first is enough), from the ``--threads`` option of the command line being run. XLA's
CPU flags (for the optional ``jax`` implementation) are set here too, before JAX loads.
"""

import os
import sys

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def requested_threads(argv: list[str]) -> int:
    """The N of ``--threads N`` (or ``--threads=N``) in ``argv``; 1 without it. Read here, not
    by argparse, because the thread counts must be set before NumPy loads."""
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith("--threads="):
            value = arg.partition("=")[2]
        else:
            continue
        return int(value) if value.isdigit() and int(value) > 0 else 1
    return 1


THREADS = requested_threads(sys.argv)
for _name in THREAD_VARIABLES:
    os.environ[_name] = str(THREADS)


def xla_flags(threads: int, existing: str = "") -> str:
    """``XLA_FLAGS`` for ``threads``: the caller's flags, plus Eigen's single-threaded runtime for
    one thread unless the caller chose. (XLA's CPU thread pools have no size flag:
    ``benchmarks.jax_steps`` sizes them when it starts JAX's CPU client.)"""
    if "--xla_cpu_multi_thread_eigen" in existing:
        return existing
    ours = "--xla_cpu_multi_thread_eigen=" + ("false" if threads == 1 else "true")
    return f"{existing} {ours}".strip()


os.environ["XLA_FLAGS"] = xla_flags(THREADS, os.environ.get("XLA_FLAGS", ""))

# When NumPy was imported before this package (e.g. by a test runner), its BLAS may already have
# started its threads; the harness records this in the results.
NUMPY_LOADED_BEFORE_THREAD_SETTINGS = "numpy" in sys.modules
JAX_LOADED_BEFORE_THREAD_SETTINGS = "jax" in sys.modules
