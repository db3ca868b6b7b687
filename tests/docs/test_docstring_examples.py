"""The examples in the docstrings of the public API run as doctests: each module below, whose
public functions and classes carry examples, has every example executed and compared with the
output it shows. ``tg``, ``np``, ``nn``, ``F`` and ``optim`` are imported for the examples, as a
reader has them."""

from __future__ import annotations

import doctest
import importlib

import numpy as np
import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim

MODULES = [
    "tracegrad.autograd.function",
    "tracegrad.autograd.functional",
    "tracegrad.autograd.gradcheck",
    "tracegrad.blas",
    "tracegrad.compile",
    "tracegrad.compiled.function",
    "tracegrad.compiled.module",
    "tracegrad.creation",
    "tracegrad.data",
    "tracegrad.data.sampler",
    "tracegrad.devices",
    "tracegrad.dtypes",
    "tracegrad.errors",
    "tracegrad.functions",
    "tracegrad.nn.containers",
    "tracegrad.nn.functional",
    "tracegrad.nn.layers",
    "tracegrad.nn.module",
    "tracegrad.nn.recurrent",
    "tracegrad.nn.sync_batchnorm",
    "tracegrad.optim.adam",
    "tracegrad.optim.adaptive",
    "tracegrad.optim.lbfgs",
    "tracegrad.optim.sgd",
    "tracegrad.random",
    "tracegrad.serialization",
    "tracegrad.tape",
    "tracegrad.tensor.core",
    "tracegrad.tensor.methods",
    "tracegrad.tensor.norms",
    "tracegrad.tensor.sampling",
]
GLOBALS = {"tg": tg, "np": np, "nn": nn, "F": F, "optim": optim}


def examples():
    finder = doctest.DocTestFinder(exclude_empty=True)
    for name in MODULES:
        module = importlib.import_module(name)
        for test in finder.find(module, globs=dict(GLOBALS)):
            if test.examples:
                yield pytest.param(test, id=test.name.removeprefix("tracegrad."))


@pytest.mark.parametrize("test", examples())
def test_the_docstring_example_runs_as_shown(test):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.failures == 0, f"{test.name}: {runner.failures} example(s) differ (see above)"


def test_every_module_listed_has_examples():
    finder = doctest.DocTestFinder(exclude_empty=True)
    for name in MODULES:
        tests = finder.find(importlib.import_module(name), globs={})
        assert any(test.examples for test in tests), name
