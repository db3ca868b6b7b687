"""Grad-mode switches as PyTorch has them: set_grad_enabled (a function and a context manager),
no_grad / enable_grad / inference_mode as context managers and decorators."""

import threading

import pytest

import tracegrad as tg


def _records() -> bool:
    x = tg.ones(2, requires_grad=True)
    return (x * 2).requires_grad


def test_set_grad_enabled_as_a_function():
    try:
        tg.set_grad_enabled(False)
        assert not tg.is_grad_enabled() and not _records()
        tg.set_grad_enabled(True)
        assert tg.is_grad_enabled() and _records()
    finally:
        tg.set_grad_enabled(True)


@pytest.mark.parametrize("outer", [True, False])
def test_set_grad_enabled_as_a_context_restores_the_mode_before_it(outer):
    with tg.set_grad_enabled(outer):
        for mode in (False, True):
            with tg.set_grad_enabled(mode):
                assert tg.is_grad_enabled() is mode and _records() is mode
            assert tg.is_grad_enabled() is outer
    assert tg.is_grad_enabled()


def test_set_grad_enabled_restores_after_an_exception():
    with pytest.raises(KeyError), tg.set_grad_enabled(False):
        raise KeyError
    assert tg.is_grad_enabled()


def test_set_grad_enabled_as_a_decorator_sets_nothing_until_called():
    @tg.set_grad_enabled(False)
    def f():
        return tg.is_grad_enabled()

    assert tg.is_grad_enabled()
    assert f() is False and tg.is_grad_enabled()


@pytest.mark.parametrize(
    "decorator", [tg.no_grad, tg.no_grad(), tg.inference_mode, tg.inference_mode()]
)
def test_disabling_decorators_with_and_without_parentheses(decorator):
    @decorator
    def f(x):
        """Doubles."""
        return x * 2, tg.is_grad_enabled()

    y, enabled = f(tg.ones(2, requires_grad=True))
    assert not enabled and not y.requires_grad
    assert f.__name__ == "f" and f.__doc__ == "Doubles."
    assert tg.is_grad_enabled()


def test_enable_grad_inside_no_grad():
    @tg.enable_grad
    def f():
        return _records()

    with tg.no_grad():
        assert f() and not _records()
        with tg.enable_grad():
            assert _records()


def test_inference_mode_false_leaves_the_mode_alone():
    with tg.inference_mode():
        assert not tg.is_grad_enabled()
        with tg.inference_mode(False):
            assert not tg.is_grad_enabled()
    with tg.inference_mode(mode=False):
        assert tg.is_grad_enabled()


def test_a_decorated_function_nests_and_runs_in_threads():
    @tg.no_grad()
    def f(depth):
        with tg.enable_grad():
            inner = f(depth - 1) if depth else tg.is_grad_enabled()
        return inner, tg.is_grad_enabled()

    assert f(3) == ((((True, False), False), False), False)
    results = []
    threads = [threading.Thread(target=lambda: results.append(f(0))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [(True, False)] * 4 and tg.is_grad_enabled()


def test_the_mode_is_per_thread():
    seen = []
    with tg.no_grad():
        thread = threading.Thread(target=lambda: seen.append(tg.is_grad_enabled()))
        thread.start()
        thread.join()
    assert seen == [True]


def test_autograd_exports_the_same_switches():
    assert tg.autograd.set_grad_enabled is tg.set_grad_enabled
    assert tg.autograd.inference_mode is tg.inference_mode
