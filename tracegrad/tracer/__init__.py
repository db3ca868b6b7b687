"""Symbolic tracing of modules and functions into IR graphs."""

from tracegrad.tracer.core import Symbol, Tracer, tracing

__all__ = ["Symbol", "Tracer", "tracing"]
