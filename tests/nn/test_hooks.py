"""Module hooks: forward pre-hooks and forward hooks (replacing inputs and outputs, order,
prepend, with_kwargs, always_call, removal), full backward hooks and pre-hooks (grad_input and
grad_output as PyTorch gives them, replacing gradients), against PyTorch; and forward hooks inside
tg.compile, running while tracing, in compiled modules and whole compiled steps."""

from __future__ import annotations

import numpy as np
import pytest

import tracegrad as tg
from tracegrad import nn, optim

TOL = 1e-12


def close(actual, expected, what="", tol=TOL):
    np.testing.assert_allclose(
        np.asarray(actual), np.asarray(expected), rtol=tol, atol=tol, err_msg=what
    )


def numbers(lib):
    """A Linear with fixed float64 weights, in tracegrad or PyTorch."""
    layer = lib.nn.Linear(3, 2).double()
    with lib.no_grad():
        layer.weight.copy_(lib.tensor(np.arange(6.0).reshape(2, 3) * 0.1))
        layer.bias.copy_(lib.tensor(np.array([0.5, -0.5])))
    return layer


def arrays(value):
    if value is None:
        return None
    return value.detach().numpy().copy()


# --- forward hooks -------------------------------------------------------------------------------


def forward_with_hooks(lib):
    """Pre-hooks and hooks that change inputs and outputs, in the order they run."""
    layer, order = numbers(lib), []

    def double_input(module, args):
        order.append("pre")
        return args[0] * 2  # a single value stands for a 1-tuple

    def first(module, args):
        order.append("prepended pre")

    def shift_output(module, args, output):
        order.append("hook")
        return output + args[0].sum()

    def with_kwargs(module, args, kwargs, output):
        order.append("kwargs hook")
        assert kwargs == {}

    layer.register_forward_pre_hook(double_input)
    layer.register_forward_pre_hook(first, prepend=True)
    layer.register_forward_hook(shift_output)
    layer.register_forward_hook(with_kwargs, with_kwargs=True)
    x = lib.tensor(np.linspace(-1, 1, 12).reshape(4, 3), requires_grad=True)
    out = layer(x)
    (out * out).sum().backward()
    return arrays(out), arrays(x.grad), arrays(layer.weight.grad), order


def test_forward_hooks_replace_inputs_and_outputs_as_in_torch():
    torch = pytest.importorskip("torch")
    ours, theirs = forward_with_hooks(tg), forward_with_hooks(torch)
    for a, b in zip(ours[:3], theirs[:3], strict=True):
        close(a, b)
    assert ours[3] == theirs[3] == ["prepended pre", "pre", "hook", "kwargs hook"]


def test_pre_hook_with_kwargs_replaces_keyword_arguments():
    class Scale(nn.Module):
        def forward(self, x, factor=1.0):
            return x * factor

    module = Scale()
    module.register_forward_pre_hook(
        lambda m, args, kwargs: (args, {"factor": 3.0}), with_kwargs=True
    )
    close(module(tg.tensor([1.0, 2.0]), factor=5.0).numpy(), [3.0, 6.0])


def test_handles_remove_hooks_once_and_as_context_managers():
    layer, calls = nn.Linear(2, 2), []
    handle = layer.register_forward_hook(lambda m, a, o: calls.append("kept"))
    with layer.register_forward_pre_hook(lambda m, a: calls.append("scoped")):
        layer(tg.zeros(1, 2))
    layer(tg.zeros(1, 2))
    handle.remove()
    handle.remove()  # a second remove does nothing
    layer(tg.zeros(1, 2))
    assert calls == ["scoped", "kept", "kept"]


def test_always_call_hook_runs_when_forward_raises():
    layer, calls = nn.Linear(2, 2), []
    layer.register_forward_hook(lambda m, a, o: calls.append(o), always_call=True)
    layer.register_forward_hook(lambda m, a, o: calls.append("not always"))
    with pytest.raises(tg.errors.ShapeError):
        layer(tg.zeros(1, 3))
    assert calls == [None]


def test_share_memory_returns_the_module():
    layer = nn.Linear(2, 2)
    weight = layer.weight
    assert layer.share_memory() is layer and layer.weight is weight


# --- full backward hooks -------------------------------------------------------------------------


class Mix:
    """A module taking two tensors and a number, returning two tensors: grad_input has an
    entry per positional argument, grad_output one per output."""

    @staticmethod
    def build(lib):
        class Module(lib.nn.Module):
            def __init__(self):
                super().__init__()
                self.linear = numbers(lib)

            def forward(self, x, y, power):
                return self.linear(x) * y, (x**power).sum(1)

        return Module()


def backward_hook_run(lib, y_requires_grad: bool, replace: bool):
    module, seen = Mix.build(lib), []

    def hook(m, grad_input, grad_output):
        seen.append(([arrays(g) for g in grad_input], [arrays(g) for g in grad_output]))
        if replace:
            return tuple(None if g is None else g * 10 for g in grad_input)
        return None

    module.register_full_backward_hook(hook)
    x = lib.tensor(np.linspace(-1, 1, 6).reshape(2, 3), requires_grad=True)
    y = lib.tensor(np.array([[2.0, -1.0], [0.5, 3.0]]), requires_grad=y_requires_grad)
    a, b = module(x, y, 3)
    ((a * a).sum() + b.sum()).backward()
    return seen, arrays(x.grad), arrays(y.grad), arrays(module.linear.weight.grad)


@pytest.mark.parametrize("y_requires_grad", [True, False])
@pytest.mark.parametrize("replace", [False, True])
def test_full_backward_hook_sees_what_torch_gives_and_can_replace_it(y_requires_grad, replace):
    torch = pytest.importorskip("torch")
    ours = backward_hook_run(tg, y_requires_grad, replace)
    theirs = backward_hook_run(torch, y_requires_grad, replace)
    (seen,), (expected,) = ours[0], theirs[0]
    for kind, got, want in zip(("grad_input", "grad_output"), seen, expected, strict=True):
        assert len(got) == len(want), kind
        for g, w in zip(got, want, strict=True):
            assert (g is None) == (w is None), kind
            if w is not None:
                close(g, w, kind)
    for a, b in zip(ours[1:], theirs[1:], strict=True):
        assert (a is None) == (b is None)
        if b is not None:
            close(a, b)


def backward_pre_hook_run(lib):
    """A pre-hook doubling the second output's gradient, and the full hook seeing it."""
    module, seen = Mix.build(lib), []
    module.register_full_backward_pre_hook(
        lambda m, grad_output: (grad_output[0], grad_output[1] * 2)
    )
    module.register_full_backward_hook(lambda m, gi, go: seen.append([arrays(g) for g in go]))
    x = lib.tensor(np.linspace(-1, 1, 6).reshape(2, 3), requires_grad=True)
    a, b = module(x, lib.tensor(np.array([[2.0, -1.0], [0.5, 3.0]])), 3)
    ((a * a).sum() + (b * b).sum()).backward()
    return seen[0], arrays(x.grad), arrays(module.linear.weight.grad)


def test_full_backward_pre_hook_replaces_grad_output_as_in_torch():
    torch = pytest.importorskip("torch")
    (seen, *grads), (expected, *torch_grads) = (
        backward_pre_hook_run(tg),
        backward_pre_hook_run(torch),
    )
    for got, want in zip([*seen, *grads], [*expected, *torch_grads], strict=True):
        close(got, want)


def test_backward_hook_without_inputs_needing_grad_gets_none():
    layer, seen = numbers(tg), []
    layer.register_full_backward_hook(lambda m, gi, go: seen.append((gi, len(go))))
    layer(tg.ones(2, 3)).sum().backward()
    assert seen == [((None,), 1)]
    assert layer.weight.grad is not None


def test_backward_hook_returning_gradients_it_cannot_replace_raises():
    layer = numbers(tg)
    handle = layer.register_full_backward_hook(lambda m, gi, go: (gi[0], gi[0]))
    with pytest.raises(RuntimeError, match="returned 2 gradients, expected 1"):
        layer(tg.ones(2, 3, requires_grad=True)).sum().backward()
    handle.remove()
    layer.register_full_backward_hook(lambda m, gi, go: (go[0],))
    with pytest.raises(RuntimeError, match="no input requires a gradient"):
        layer(tg.ones(2, 3)).sum().backward()


# --- compiled ------------------------------------------------------------------------------------


def hooked_model(trace_log):
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()

    def scale_output(module, args, output):
        trace_log.append("forward hook")
        return output * 2

    model[0].register_forward_hook(scale_output)
    model[2].register_forward_pre_hook(lambda m, args: args[0] + 1)
    # A hook that only computes new gradients: compiled into the backward too
    model[0].register_full_backward_hook(lambda m, gi, go: None if gi[0] is None else (gi[0] / 2,))
    model[2].register_full_backward_pre_hook(lambda m, grad_output: (grad_output[0] * 3,))
    return model


def data(seed):
    return tg.tensor(np.random.default_rng(seed).standard_normal((5, 3)), requires_grad=True)


def module_run(compiled: bool, passes):
    log = []
    model = hooked_model(log)
    target = tg.compile(model, passes=passes) if compiled else model
    record = []
    for seed in (1, 2, 3):
        model.zero_grad()
        x = data(seed)
        out = target(x)
        (out * out).sum().backward()
        record += [arrays(out), arrays(x.grad), *(arrays(p.grad) for p in model.parameters())]
    return record, log


@pytest.mark.parametrize("passes", ["default", None], ids=["default", "unoptimized"])
def test_compiled_module_runs_forward_hooks_while_tracing(passes):
    (expected, eager_log), (actual, compiled_log) = (module_run(c, passes) for c in (False, True))
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        close(a, e, f"value {i}")
    assert eager_log == ["forward hook"] * 3
    assert compiled_log == ["forward hook"]  # once, while tracing the one specialization


def step_run(compiled: bool):
    model = hooked_model([])
    opt = optim.Adam(model.parameters(), lr=0.05)

    def step(x):
        opt.zero_grad()
        loss = (model(x) ** 2).mean()
        loss.backward()
        opt.step()
        return loss

    run = tg.compile(step) if compiled else step
    losses = [run(data(seed).detach()).item() for seed in (1, 2, 3)]
    return losses, [arrays(p) for p in model.parameters()]


def test_compiled_step_with_hooks_equals_eager():
    (losses_e, params_e), (losses_c, params_c) = step_run(False), step_run(True)
    close(losses_c, losses_e, "losses")
    for i, (c, e) in enumerate(zip(params_c, params_e, strict=True)):
        close(c, e, f"parameter {i}")


def test_registering_or_removing_a_hook_recompiles():
    tg.manual_seed(0)
    layer = nn.Linear(3, 2).double()
    compiled = tg.compile(layer)
    x = data(4).detach()
    plain = compiled(x).detach().numpy()
    handle = layer.register_forward_hook(lambda m, a, o: o * 0 + 7)
    close(compiled(x).detach().numpy(), np.full((5, 2), 7.0))
    handle.remove()
    close(compiled(x).detach().numpy(), plain)
