"""A whole step reaching its model and optimizer by any path computes what eager does: by
name, through a dict or a list, or only through helper functions (where tracing the step is
the first sign of the optimizer and of the state it creates)."""

import numpy as np
import pytest

import tracegrad as tg
from tracegrad import nn


def build():
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, opt


def by_name(model, opt):
    def step(x, y):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return step


def through_dict(model, opt):
    state = {"model": model, "opt": opt}

    def step(x, y):
        state["opt"].zero_grad()
        loss = nn.functional.cross_entropy(state["model"](x), y)
        loss.backward()
        state["opt"].step()
        return loss

    return step


def through_list(model, opt):
    kit = [model, opt]

    def step(x, y):
        kit[1].zero_grad()
        loss = nn.functional.cross_entropy(kit[0](x), y)
        loss.backward()
        kit[1].step()
        return loss

    return step


def through_helpers(model, opt):
    def forward(x):
        return model(x)

    def update():
        opt.step()

    def zero():
        opt.zero_grad()

    def step(x, y):
        zero()
        loss = nn.functional.cross_entropy(forward(x), y)
        loss.backward()
        update()
        return loss

    return step


def batches(count=5):
    rng = np.random.default_rng(0)
    return [
        (
            tg.tensor(rng.standard_normal((8, 6)).astype(np.float32)),
            tg.tensor(rng.integers(0, 3, 8)),
        )
        for _ in range(count)
    ]


@pytest.mark.parametrize("path", [by_name, through_dict, through_list, through_helpers])
def test_compiled_step_matches_eager_whatever_the_path_to_its_state(path):
    eager_model, eager_opt = build()
    model, opt = build()
    eager, compiled = path(eager_model, eager_opt), tg.compile(path(model, opt))
    for x, y in batches():
        np.testing.assert_allclose(compiled(x, y).item(), eager(x, y).item(), rtol=1e-6)
    for p, q in zip(model.parameters(), eager_model.parameters(), strict=True):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5, atol=1e-6)
        buffer, eager_buffer = (
            opt.state[p]["momentum_buffer"],
            eager_opt.state[q]["momentum_buffer"],
        )
        np.testing.assert_allclose(buffer.numpy(), eager_buffer.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", [through_dict, through_list])
def test_state_in_a_container_is_guarded_before_the_first_trace(path):
    model, opt = build()
    step = tg.compile(path(model, opt))
    for x, y in batches(3):
        step(x, y)
    # the first call is traced with the momentum buffers it makes (made ahead through the
    # container): steady from the first call
    assert step.recompile_reasons == []
    assert len(opt.state) == len(list(model.parameters()))


def test_a_program_whose_guards_missed_state_found_by_tracing_serves_one_call():
    model, opt = build()
    step = tg.compile(through_helpers(model, opt))
    x, y = batches(1)[0]
    step(x, y)
    assert opt.state  # the traced step created the momentum buffers
    step(x, y)  # the signature now covers the optimizer tracing found: traced again
    assert len(step.recompile_reasons) == 1
    assert "optimizer" in step.recompile_reasons[0]
    step(x, y)
    assert len(step.recompile_reasons) == 1
