"""Graph passes: each a named Graph -> Graph function, run in order by ``tracegrad.passes.run``.

Importing this package registers them all; ``DEFAULT_PIPELINE`` lists the default order.
"""

from tracegrad.passes import (
    autodiff,
    cse,
    dce,
    fold,
    fuse,
    horizontal,
    memory,
    schedule,
    simplify,
)
from tracegrad.passes.pipeline import (
    DEFAULT_PIPELINE,
    PASSES,
    PassResult,
    register_pass,
    resolve,
    run,
    run_pass,
)

__all__ = [
    "DEFAULT_PIPELINE",
    "PASSES",
    "PassResult",
    "autodiff",
    "register_pass",
    "resolve",
    "run",
    "run_pass",
]
