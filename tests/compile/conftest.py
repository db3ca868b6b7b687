"""Fixtures and hooks of the compiler tests.

The model zoo lives in ``compile_zoo.py`` (importable by that name because pytest puts this
directory on ``sys.path``; ``tests`` is not a package) and reaches tests through the ``zoo``
fixture: ``zoo.build("mlp")`` returns a fresh :class:`compile_zoo.Setup`. A test taking a
``model_name`` argument runs once per zoo model, or per model named by ``@pytest.mark.models``.
"""

from __future__ import annotations

from types import SimpleNamespace

import compile_zoo
import pytest


def model_params(names=None):
    """``pytest.param`` per model name, xfail-marked (strict) where a known bug bites."""
    result = []
    for name in names or compile_zoo.MODELS:
        reason = compile_zoo.MODEL_BUGS.get(name)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        result.append(pytest.param(name, id=name, marks=marks))
    return result


@pytest.fixture(scope="session")
def zoo():
    return SimpleNamespace(
        build=compile_zoo.build,
        MODELS=compile_zoo.MODELS,
        SignSTE=compile_zoo.SignSTE,
        BinaryNet=compile_zoo.BinaryNet,
        MLP=compile_zoo.MLP,
        CNN=compile_zoo.CNN,
        Transformer=compile_zoo.Transformer,
        file=compile_zoo.__file__,
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "models(*names): run a test taking `model_name` only for these zoo models"
    )


def pytest_generate_tests(metafunc):
    """A test taking ``model_name`` runs once per zoo model (or per ``@pytest.mark.models``)."""
    if "model_name" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("models")
        metafunc.parametrize("model_name", model_params(marker.args if marker else None))
