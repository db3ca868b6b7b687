"""Graph passes: each a named Graph -> Graph function, run in order by ``tracegrad.passes.run``.

Importing this package registers them all; ``DEFAULT_PIPELINE`` lists the default order.
"""

from tracegrad.passes import (
    autodiff,
    canonicalize,
    cse,
    dce,
    fold,
    fuse,
    fuse_training_step,
    horizontal,
    memory,
    schedule,
    simplify,
    specialize_numpy,
    stabilize,
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
