"""Graph passes: each a named, pure Graph -> Graph function, run by ``tracegrad.passes.run``."""

from tracegrad.passes import autodiff, dce  # registers the passes
from tracegrad.passes.pipeline import DEFAULT_PIPELINE, PASSES, register_pass, resolve, run

__all__ = ["DEFAULT_PIPELINE", "PASSES", "autodiff", "register_pass", "resolve", "run"]
