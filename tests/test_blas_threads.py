"""tg.set_num_threads / tg.get_num_threads (tracegrad/blas.py): the BLAS thread limit as
threadpoolctl reports it, bad counts refused, results unchanged, and the demo running with and
reporting a setting."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim
from tracegrad.cli import main


@pytest.fixture
def restore_threads():
    previous = tg.get_num_threads()
    yield
    tg.set_num_threads(previous)


def blas_thread_counts() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


@pytest.mark.parametrize("count", [1, 2])
def test_set_num_threads_limits_every_blas_library(restore_threads, count):
    tg.set_num_threads(count)
    assert tg.get_num_threads() == count
    assert blas_thread_counts() == {count}


@pytest.mark.parametrize(
    ("count", "error", "message"),
    [
        (0, ValueError, "at least 1 thread, got 0"),
        (-3, ValueError, "at least 1 thread, got -3"),
        (1.5, TypeError, "takes an int, not float"),
        ("2", TypeError, "takes an int, not str"),
        (True, TypeError, "takes an int, not bool"),
    ],
)
def test_bad_thread_counts_are_refused_and_change_nothing(restore_threads, count, error, message):
    before = tg.get_num_threads()
    with pytest.raises(error, match=message):
        tg.set_num_threads(count)
    assert tg.get_num_threads() == before


def test_numpy_integers_are_thread_counts(restore_threads):
    tg.set_num_threads(np.int64(1))
    assert tg.get_num_threads() == 1


def _compiled_step_weights() -> np.ndarray:
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 5))
    opt = optim.SGD(model.parameters(), lr=0.1)

    def train_step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    step = tg.compile(train_step)
    x, y = tg.randn(16, 32), tg.randint(0, 5, (16,))
    for _ in range(3):
        step(x, y)
    return model[2].weight.detach().numpy()


def test_a_compiled_step_trains_alike_on_one_and_two_threads(restore_threads):
    tg.set_num_threads(1)
    one = _compiled_step_weights()
    tg.set_num_threads(2)
    two = _compiled_step_weights()
    np.testing.assert_allclose(one, two, rtol=1e-5, atol=1e-6)


def test_the_demo_runs_with_the_threads_asked_and_says_so(restore_threads, tmp_path):
    from tracegrad.demo import run_demo

    tg.set_num_threads(2)
    summary = run_demo(epochs=1, picture=tmp_path / "demo.html", progress=False, threads=1)
    assert "BLAS threads: 1 " in summary
    assert tg.get_num_threads() == 2  # the process's setting is back


def test_the_demo_command_refuses_zero_threads(capsys):
    assert main(["demo", "--threads", "0"]) == 2
    assert "--threads needs at least 1 thread, got 0" in capsys.readouterr().err


def test_the_demo_command_hands_its_thread_count_to_the_demo(monkeypatch, capsys):
    asked = {}

    def fake_demo(**kwargs):
        asked.update(kwargs)
        return "summary"

    monkeypatch.setattr("tracegrad.cli.run_demo", fake_demo)
    assert main(["demo", "--threads", "3", "--epochs", "1"]) == 0
    assert asked["threads"] == 3 and asked["epochs"] == 1
    assert main(["demo"]) == 0 and asked["threads"] is None  # the process's setting is kept
    assert capsys.readouterr().out == "summary\nsummary\n"
