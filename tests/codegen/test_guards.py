"""The generated guard of a compiled step accepts exactly the calls whose signature is its
specialization's: each kind of guard is changed in turn and both answers are compared. The
step's runner makes the same checks before it runs the step: a call it refuses goes the slow
way (recompiling, or tracing through when the call is inside another trace)."""

from __future__ import annotations

import numpy as np
import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim, tape
from tracegrad.codegen.guards import GuardBuilder
from tracegrad.codegen.runner import MISS, RunnerBindings, build_runner


def compiled_step():
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.1), nn.Linear(5, 3)).double()
    opt = optim.SGD(model.parameters(), lr=0.1)

    def step(x, y, scale=1.0):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y) * scale
        loss.backward()
        opt.step()
        return loss

    compiled = tg.compile(step)
    x, y = tg.tensor(np.ones((6, 4))), tg.tensor([0, 1, 2, 0, 1, 2])
    compiled(x, y)
    compiled(x, y)  # grads exist now: the same specialization serves the steady state
    return compiled, model, opt, x, y


def matches(compiled, args) -> bool:
    """What the signature says of a call: its specialization is the latest."""
    return compiled.signature(args) == compiled.latest.signature


CHANGES = {
    "nothing": lambda model, opt, x, y: (x, y),
    "an input's shape": lambda model, opt, x, y: (tg.tensor(np.ones((7, 4))), y),
    "an input's dtype": lambda model, opt, x, y: (x.float(), y),
    "an input's requires_grad": lambda model, opt, x, y: (x.detach().requires_grad_(), y),
    "a plain argument": lambda model, opt, x, y: (x, y, 2.0),
    "a tensor for a plain argument": lambda model, opt, x, y: (x, y, tg.tensor(2.0)),
    "the number of arguments": lambda model, opt, x, y: (x,),
    "a parameter's grad dropped": lambda model, opt, x, y: (opt.zero_grad(), x, y)[1:],
    "a parameter's requires_grad": lambda model, opt, x, y: (
        model[0].bias.requires_grad_(False),
        x,
        y,
    )[1:],
    # (a number the update reads is an input of the step: it is not guarded)
    "the learning rate": lambda model, opt, x, y: (
        opt.param_groups[0].__setitem__("lr", 0.5),
        x,
        y,
    )[1:],
    "a momentum where there was none": lambda model, opt, x, y: (
        opt.param_groups[0].__setitem__("momentum", 0.9),
        x,
        y,
    )[1:],
    "the learning rate, equal but a NumPy float (compared by repr)": lambda model, opt, x, y: (
        opt.param_groups[0].__setitem__("lr", np.float64(0.1)),
        x,
        y,
    )[1:],
    "a hyperparameter added": lambda model, opt, x, y: (
        opt.param_groups[0].__setitem__("lr_scale", 1.0),
        x,
        y,
    )[1:],
    "a hyperparameter removed": lambda model, opt, x, y: (
        opt.param_groups[0].pop("dampening"),
        x,
        y,
    )[1:],
    "an optimizer state entry appears": lambda model, opt, x, y: (
        opt.state[model[0].bias].__setitem__("momentum_buffer", tg.zeros(5, dtype=tg.float64)),
        x,
        y,
    )[1:],
    "a group replaced by a plain dict": lambda model, opt, x, y: (
        opt.param_groups.__setitem__(0, dict(opt.param_groups[0], weight_decay=0.5)),
        x,
        y,
    )[1:],
    "eval mode": lambda model, opt, x, y: (model.eval(), x, y)[1:],
    "a submodule's mode": lambda model, opt, x, y: (model[1].eval(), x, y)[1:],
    "a submodule's flag set": lambda model, opt, x, y: (
        setattr(model[1], "training", False),
        x,
        y,
    )[1:],
}


@pytest.mark.parametrize("change", CHANGES.values(), ids=CHANGES.keys())
def test_guard_accepts_exactly_the_calls_the_signature_matches(change):
    compiled, model, opt, x, y = compiled_step()
    args = change(model, opt, x, y)
    assert compiled.latest.guard(args) == matches(compiled, args)
    # (the step's zero_grad() drops the .grad before anything reads it: it is not guarded)
    accepted = change in (
        CHANGES["nothing"],
        CHANGES["the learning rate"],
        CHANGES["a parameter's grad dropped"],
    )
    assert compiled.latest.guard(args) == accepted


def adam_step():
    tg.manual_seed(0)
    model = nn.Linear(4, 3).double()
    opt = optim.Adam(model.parameters(), lr=0.1)

    def step(x, y):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()

    compiled = tg.compile(step)
    x, y = tg.tensor(np.ones((6, 4))), tg.tensor([0, 1, 2, 0, 1, 2])
    compiled(x, y)
    compiled(x, y)  # the state exists now: the steady specialization
    return compiled, model, opt, x, y


def replace_state_tensor(model, opt):
    state = opt.state[model.weight]
    state["exp_avg"] = state["exp_avg"].clone()


STATE_CHANGES = {
    "nothing": lambda model, opt: None,
    "a state tensor replaced (as load_state_dict does)": replace_state_tensor,
    "a state entry added": lambda model, opt: opt.state[model.bias].__setitem__(
        "max_exp_avg_sq", tg.zeros(3, dtype=tg.float64)
    ),
    "a parameter's state dropped": lambda model, opt: opt.state[model.bias].clear(),
    # (numbers the update reads are inputs: only whether a weight decay is 0 is guarded)
    "betas": lambda model, opt: opt.param_groups[0].__setitem__("betas", (0.8, 0.9)),
    "a weight decay": lambda model, opt: opt.param_groups[0].__setitem__("weight_decay", 0.1),
    "amsgrad": lambda model, opt: opt.param_groups[0].__setitem__("amsgrad", True),
}


@pytest.mark.parametrize("change", STATE_CHANGES.values(), ids=STATE_CHANGES.keys())
def test_guard_follows_the_optimizer_state_as_the_signature_does(change):
    compiled, model, opt, x, y = adam_step()
    change(model, opt)
    assert compiled.latest.guard((x, y)) == matches(compiled, (x, y))
    accepted = change in (STATE_CHANGES["nothing"], STATE_CHANGES["betas"])
    assert compiled.latest.guard((x, y)) == accepted


def test_empty_optimizer_state_entries_are_no_state():
    """Plain SGD keeps no state: an empty entry made for another tensor changes neither the
    signature nor the guard's answer."""
    compiled, _, opt, x, y = compiled_step()
    assert not any(opt.state.values())
    opt.state[tg.zeros(2)] = {}  # (the optimizer makes one per parameter it steps)
    assert matches(compiled, (x, y)) and compiled.latest.guard((x, y))


def test_guard_refuses_calls_under_no_grad():
    compiled, _, _, x, y = compiled_step()
    with tg.no_grad():
        assert not compiled.latest.guard((x, y))
        assert not matches(compiled, (x, y))


def test_a_refused_call_recompiles_and_the_next_steady_call_is_guarded_again():
    compiled, model, _, x, y = compiled_step()
    model.eval()
    compiled(x, y)
    assert compiled.latest.guard((x, y))
    model.train()
    compiled(x, y)  # back to the first specialization, found by its signature
    assert compiled.latest.guard((x, y)) and matches(compiled, (x, y))
    assert len(compiled.recompile_reasons) == 1  # eval mode (the first call was the steady one)


# --- compiled modules ----------------------------------------------------------------------------


class Scaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
        self.register_buffer("offset", tg.zeros(3))

    def forward(self, x):
        return self.net(x) + self.offset


def compiled_module():
    tg.manual_seed(1)
    module = Scaled().double()
    compiled = tg.compile(module)
    x = tg.tensor(np.ones((6, 4)))
    compiled(x)
    return compiled, module, x


def replace_parameter(module, x):
    module.net[0].bias = nn.Parameter(tg.zeros(5, dtype=tg.float64))
    return (x,)


def add_submodule(module, x):
    module.extra = nn.Linear(2, 2)
    return (x,)


MODULE_CHANGES = {
    "nothing": lambda module, x: (x,),
    "an input's shape": lambda module, x: (tg.tensor(np.ones((7, 4))),),
    "an input's dtype": lambda module, x: (x.float(),),
    "an input's requires_grad": lambda module, x: (x.detach().requires_grad_(),),
    "a parameter's requires_grad": lambda module, x: (
        module.net[2].weight.requires_grad_(False),
        x,
    )[1:],
    "a parameter replaced by another tensor": replace_parameter,
    "a buffer replaced by a tensor of its shape and dtype": lambda module, x: (
        module.register_buffer("offset", tg.ones(3, dtype=tg.float64)),
        x,
    )[1:],
    "a buffer of another shape": lambda module, x: (
        module.register_buffer("offset", tg.zeros(1, dtype=tg.float64)),
        x,
    )[1:],
    "a buffer of another dtype": lambda module, x: (
        module.register_buffer("offset", tg.zeros(3, dtype=tg.float32)),
        x,
    )[1:],
    "a submodule added": add_submodule,
    "eval mode": lambda module, x: (module.eval(), x)[1:],
    "a submodule's mode": lambda module, x: (module.net[1].eval(), x)[1:],
}


def module_matches(compiled, args) -> bool:
    """What a compiled module's signature says of a call: its specialization is the latest."""
    return compiled.cached(compiled.signature(args)) is compiled.latest


@pytest.mark.parametrize("change", MODULE_CHANGES.values(), ids=MODULE_CHANGES.keys())
def test_module_guard_accepts_exactly_the_calls_the_signature_matches(change):
    compiled, module, x = compiled_module()
    args = change(module, x)
    assert compiled.latest.guard(args) == module_matches(compiled, args)
    assert compiled.latest.guard(args) == (change is MODULE_CHANGES["nothing"])


def test_a_buffer_replaced_by_another_tensor_is_read_by_the_next_call():
    """The compiled forward reads the buffers it traced: one replaced by another tensor (of
    the same shape and dtype) is a new specialization, which reads it."""
    compiled, module, x = compiled_module()
    before = compiled(x).detach().numpy().copy()
    module.register_buffer("offset", tg.ones(3, dtype=tg.float64))
    assert not compiled.latest.guard((x,)) and not module_matches(compiled, (x,))
    after = compiled(x).detach().numpy()
    np.testing.assert_allclose(after, before + 1.0, rtol=1e-12)
    np.testing.assert_allclose(after, module(x).detach().numpy(), rtol=1e-12)


def test_guard_compares_a_hyperparameter_of_another_type_as_the_signature_does():
    """A NumPy float learning rate is no plain value: the guard compares the signature's
    form of the hyperparameters (its repr), so another value is another specialization."""
    compiled, _, opt, x, y = compiled_step()
    opt.param_groups[0]["lr"] = np.float64(0.1)
    compiled(x, y)
    opt.param_groups[0]["lr"] = np.float64(0.1)  # another object, the same value
    assert compiled.latest.guard((x, y)) and matches(compiled, (x, y))
    opt.param_groups[0]["lr"] = np.float64(0.2)
    assert not compiled.latest.guard((x, y)) and not matches(compiled, (x, y))


def test_runner_refuses_a_symbolic_argument_of_the_specialized_shape():
    """A compiled function called inside another trace, with a tensor of the very shape and
    dtype it was compiled for: its runner must not run the step on the symbolic value; the
    outer trace records the function's ops instead."""
    compiled = tg.compile(lambda x: (x * 3.0).exp())
    x = tg.tensor(np.linspace(0.0, 1.0, 6))
    compiled(x)
    assert compiled.latest.runner((x,)) is not MISS  # the steady call runs
    graph = tg.trace(lambda x: compiled(x) + 1.0, x)
    assert {"mul", "exp", "add"} <= set(graph.op_counts())
    assert len(compiled.specializations) == 1
    np.testing.assert_allclose(
        tg.compile(lambda x: compiled(x) + 1.0)(x).numpy(), np.exp(3.0 * x.numpy()) + 1.0
    )


def test_a_guarded_run_updates_parameters_in_place_and_keeps_grads_in_step_memory():
    """A steady call (through the runner's guards): the weight is updated in place (its
    version moves once), and its .grad, which nobody else holds, stays in the step's memory."""
    compiled, model, _, x, y = compiled_step()
    weight, memory = model[0].weight, model[0].weight.grad.numpy()  # (not the tensor)
    before = weight.detach().numpy().copy()
    version = weight.version
    compiled(x, y)
    grad = model[0].weight.grad.numpy()
    assert np.shares_memory(grad, memory), "the .grad living in planned memory stays there"
    np.testing.assert_allclose(weight.detach().numpy(), before - 0.1 * grad)
    assert weight.version == version + 1


def test_settings_changed_and_changed_back_are_accepted_again():
    # (the guard reads training flags and hyperparameters again whenever their count moves)
    compiled, model, opt, x, y = compiled_step()
    for change, undo in [
        (lambda: model.eval(), lambda: model.train()),
        (
            lambda: opt.param_groups[0].update(momentum=0.3),
            lambda: opt.param_groups[0].update(momentum=0.0),
        ),
    ]:
        change()
        assert not compiled.latest.guard((x, y))
        undo()
        assert compiled.latest.guard((x, y))
        assert compiled.latest.guard((x, y))  # (now without reading them)


def test_a_plain_dict_group_is_read_on_every_call():
    compiled, _, opt, x, y = compiled_step()
    specializations = len(compiled.specializations)
    opt.param_groups[0] = dict(opt.param_groups[0])  # not counted, and not the dict guarded
    compiled(x, y)  # the same signature: its guards are made again, naming the new dict
    runner = compiled.latest.runner
    compiled(x, y)
    assert compiled.latest.runner is runner
    assert len(compiled.specializations) == specializations
    assert compiled.latest.guard((x, y))
    opt.param_groups[0]["lr"] = 0.5  # (changes no count; a number read by the step)
    assert compiled.latest.guard((x, y))
    opt.param_groups[0]["momentum"] = 0.5  # (changes no count either)
    assert not compiled.latest.guard((x, y))


def test_a_runner_is_rendered_from_its_bindings():
    """A runner made from hand-written bindings: its guards refuse a call of another shape
    (unless trusted); it passes the arrays of the arguments and the state to the step, writes
    the new value of an updated tensor back into its memory (moving its version) and returns
    the one result as a tensor."""
    w = tg.tensor(np.array([1.0, 2.0]))
    memory, version = w.numpy(), w.version
    guards = GuardBuilder()
    guards.call((w,), tape.is_grad_enabled())
    bindings = RunnerBindings(
        guards=guards,
        step=lambda x, state: (x + state, state * 2.0),
        planned=frozenset(),
        tensor_args=(0,),
        arg_grads=(),
        state=[w],
        grad_of=frozenset(),
        n_results=1,
        updated=[w],
        updated_args=(),
        written_in_place=frozenset(),
        sinks=[],
        grads_replaced=(),
        arg_grads_replaced=(),
        uses_rng=False,
        rebuild=None,
        updated_grads={},
    )
    run = build_runner(bindings, "hand-made")
    assert run((tg.ones(3),)) is MISS
    out = run((tg.tensor(np.array([10.0, 20.0])),))
    np.testing.assert_array_equal(out.numpy(), [11.0, 22.0])
    np.testing.assert_array_equal(w.numpy(), [2.0, 4.0])
    assert np.shares_memory(w.numpy(), memory) and w.version == version + 1
    needing_grad = tg.ones(2, dtype=tg.float64, requires_grad=True)
    assert run((needing_grad,)) is MISS
    out = run((needing_grad,), trusted=True)  # (a trusted call skips the guards)
    np.testing.assert_array_equal(out.numpy(), [3.0, 5.0])
