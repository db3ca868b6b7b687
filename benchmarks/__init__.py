"""tracegrad benchmarks: the four workloads of DESIGN.md, timed side by side in one run.

Run ``python -m benchmarks`` (``--help`` for the options). One thread: the BLAS/OpenMP thread
counts are set here, before anything imports NumPy (importing this package first is enough).
"""

import os
import sys

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
for _name in THREAD_VARIABLES:
    os.environ[_name] = "1"

# When NumPy was imported before this package (e.g. by a test runner), its BLAS may already have
# started its threads; the harness records this in the results.
NUMPY_LOADED_BEFORE_THREAD_SETTINGS = "numpy" in sys.modules
