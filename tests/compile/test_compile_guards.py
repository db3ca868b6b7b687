"""Guards: a compiled program is specialized per signature (shapes, dtypes, requires_grad,
train/eval, grad mode); a new signature recompiles, and no result ever comes from a stale
specialization after parameters, shapes or modes change."""

from __future__ import annotations

import numpy as np
import pytest
from compile_zoo import train_step

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim

TOL = 1e-10


def close(actual, expected, what=""):
    actual = actual.detach().numpy() if isinstance(actual, tg.Tensor) else actual
    expected = expected.detach().numpy() if isinstance(expected, tg.Tensor) else expected
    np.testing.assert_allclose(actual, expected, rtol=TOL, atol=TOL, err_msg=what)


class Net(nn.Module):
    def __init__(self, p=0.0):
        super().__init__()
        self.fc1 = nn.Linear(20, 16)
        self.drop = nn.Dropout(p)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(self.drop(F.relu(self.fc1(x))))


def net(p=0.0):
    tg.manual_seed(3)
    return Net(p).double()


def data(batch, seed=0):
    return tg.tensor(np.random.default_rng(seed).standard_normal((batch, 20)))


def forward_backward(model, target, x):
    """Output and parameter gradients of ``target`` (the compiled or eager ``model``)."""
    model.zero_grad()
    out = target(x)
    (out * out).sum().backward()
    return out, [None if p.grad is None else p.grad.numpy().copy() for p in model.parameters()]


def assert_same(got, want):
    (out_c, grads_c), (out_e, grads_e) = got, want
    close(out_c, out_e, "output")
    for c, e in zip(grads_c, grads_e, strict=True):
        assert (c is None) == (e is None)
        if e is not None:
            close(c, e, "gradient")


def test_batch_size_change_recompiles_and_stays_right():
    model = net()
    cm = tg.compile(model)
    for batch in (4, 9, 4, 1, 9):
        x = data(batch, seed=batch)
        assert_same(forward_backward(model, cm, x), forward_backward(model, model, x))
    assert len(cm.recompile_reasons) == 2  # 4 -> 9 and 9 -> 1; the rest hit the cache
    assert "input 0: shape (4, 20) -> (9, 20)" in cm.recompile_reasons[0]


def test_max_recompiles_zero_raises_with_the_guard_diff():
    cm = tg.compile(net(), max_recompiles=0)
    cm(data(4))
    with pytest.raises(tg.RecompileError, match=r"input 0: shape \(4, 20\) -> \(9, 20\)"):
        cm(data(9))
    cm(data(4, seed=1))  # the cached specialization still serves


def test_max_recompiles_counts_recompiles():
    cm = tg.compile(net(), max_recompiles=2)
    for batch in (1, 2, 3):
        cm(data(batch))
    with pytest.raises(tg.RecompileError) as info:
        cm(data(4))
    assert "input 0: shape (3, 20) -> (4, 20)" in str(info.value)
    assert "max_recompiles=2" in str(info.value)


def test_recompile_log(monkeypatch, capsys):
    monkeypatch.setenv("TRACEGRAD_LOGS", "recompiles")
    cm = tg.compile(net())
    cm(data(4))
    assert "recompil" not in capsys.readouterr().err
    cm(data(9))
    err = capsys.readouterr().err
    assert "input 0: shape (4, 20) -> (9, 20)" in err
    assert "[tracegrad:recompiles]" in err


def test_recompile_log_is_silent_without_the_variable(monkeypatch, capfd):
    monkeypatch.delenv("TRACEGRAD_LOGS", raising=False)
    cm = tg.compile(net())
    cm(data(4))
    cm(data(9))
    captured = capfd.readouterr()
    assert "tracegrad" not in captured.err + captured.out


def test_parameter_updated_in_place_is_seen_without_recompiling():
    model = net()
    cm = tg.compile(model, max_recompiles=0)
    x = data(4)
    first = cm(x).detach().numpy().copy()
    with tg.no_grad():
        for p in model.parameters():
            p.add_(1)
    got = forward_backward(model, cm, x)
    assert not np.allclose(got[0].detach().numpy(), first)
    assert_same(got, forward_backward(model, model, x))
    assert not cm.recompile_reasons


def test_optimizer_updates_are_seen_without_recompiling():
    x = data(4)
    losses = {}
    for compiled in (False, True):
        model = net()
        target = tg.compile(model, max_recompiles=0) if compiled else model
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        losses[compiled] = []
        for _ in range(3):
            opt.zero_grad()
            loss = (target(x) ** 2).mean()
            loss.backward()
            opt.step()
            losses[compiled].append(loss.item())
    close(np.array(losses[True]), np.array(losses[False]), "losses")
    assert len(set(losses[True])) == 3


def test_whole_step_sees_parameters_changed_outside_it():
    model = net()
    opt = optim.SGD(model.parameters(), lr=0.1)

    def train_step(x):
        opt.zero_grad()
        loss = (model(x) ** 2).mean()
        loss.backward()
        opt.step()
        return loss

    step = tg.compile(train_step)
    x = data(4)
    step(x)
    step(x)  # .grad now exists: the second call may specialize once more
    compiles = len(step.recompile_reasons)
    with tg.no_grad():
        model.fc2.bias.add_(5.0)
    expected = (model(x) ** 2).mean().item()
    assert abs(step(x).item() - expected) < TOL
    assert len(step.recompile_reasons) == compiles


def test_dropout_train_mode_matches_eager_under_one_seed():
    model = net(p=0.5)
    cm = tg.compile(model)
    x = data(6)
    tg.manual_seed(42)
    got = forward_backward(model, cm, x)
    tg.manual_seed(42)
    want = forward_backward(model, model, x)
    assert_same(got, want)
    # A fresh mask each call (the mask is drawn by the generated code, not baked in).
    again = cm(x).detach().numpy()
    assert not np.allclose(again, got[0].detach().numpy())


def test_eval_mode_is_deterministic_and_recompiles():
    model = net(p=0.5)
    cm = tg.compile(model)
    x = data(6)
    cm(x)
    model.eval()
    a = forward_backward(model, cm, x)
    b = forward_backward(model, cm, x)
    assert_same(a, b)
    assert_same(a, forward_backward(model, model, x))
    assert cm.recompile_reasons[-1] == "training: train mode -> eval mode"
    cm.train()  # back to the training specialization
    assert model.training
    tg.manual_seed(1)
    got = forward_backward(model, cm, x)
    tg.manual_seed(1)
    assert_same(got, forward_backward(model, model, x))
    assert len(cm.recompile_reasons) == 1


def test_requires_grad_change_recompiles():
    model = net()
    cm = tg.compile(model)
    x = data(4)
    forward_backward(model, cm, x)
    model.fc1.requires_grad_(False)
    got = forward_backward(model, cm, x)
    assert got[1][0] is None and got[1][1] is None  # fc1 frozen: no .grad
    assert_same(got, forward_backward(model, model, x))
    assert cm.recompile_reasons[-1] == "fc1.weight, fc1.bias: no longer requires grad"
    model.fc1.requires_grad_(True)
    assert_same(forward_backward(model, cm, x), forward_backward(model, model, x))


def test_input_requires_grad_change_recompiles():
    model = net()
    cm = tg.compile(model)
    x = data(4)
    cm(x)
    x.requires_grad_(True)
    out = cm(x)
    out.sum().backward()
    assert x.grad is not None
    x_e = tg.tensor(x.detach().numpy(), requires_grad=True)
    model(x_e).sum().backward()
    close(x.grad, x_e.grad, "input gradient")
    assert "input 0: now requires grad" in cm.recompile_reasons[-1]


def test_grad_mode_change():
    model = net()
    cm = tg.compile(model)
    x = data(4)
    cm(x)
    with tg.no_grad():
        out = cm(x)
    assert not out.requires_grad
    close(out, model(x))
    assert "grad mode: True -> False" in cm.recompile_reasons[-1]


def test_dtype_change_recompiles():
    tg.manual_seed(3)
    model = Net()
    cm = tg.compile(model)
    x32 = tg.tensor(np.random.default_rng(0).standard_normal((4, 20)).astype(np.float32))
    assert cm(x32).dtype == tg.float32
    model.double()
    out = cm(x32.double())
    assert out.dtype == tg.float64
    close(out, model(x32.double()))


def test_detached_scalar_parameter_is_not_baked_in():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.s = nn.Parameter(tg.tensor(2.0))

        def forward(self, x):
            return x * self.s.detach()

    model = Scale()
    cm = tg.compile(model)
    x = tg.tensor([1.0, 2.0])
    close(cm(x), model(x))
    with tg.no_grad():
        model.s.add_(1)
    close(cm(x), model(x))


def test_buffer_change_is_seen():
    class Shift(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)
            self.register_buffer("offset", tg.zeros(3))

        def forward(self, x):
            return self.lin(x) + self.offset

    tg.manual_seed(0)
    model = Shift()
    cm = tg.compile(model, max_recompiles=0)
    x = tg.ones(2, 3)
    cm(x)
    model.offset.fill_(2.5)
    np.testing.assert_allclose(cm(x).detach().numpy(), model(x).detach().numpy(), rtol=1e-6)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_gradient_accumulation_with_zero_grad_outside_the_compiled_step(set_to_none):
    """A compiled micro-step accumulates into .grad; the optimizer steps and zeroes the
    gradients outside it every second call, replacing the .grad tensors."""
    finals = []
    for compiled in (False, True):
        model = net()
        opt = optim.SGD(model.parameters(), lr=0.1)

        def micro_step(x, model=model):
            loss = (model(x) ** 2).mean()
            loss.backward()
            return loss

        step = tg.compile(micro_step) if compiled else micro_step
        for i in range(8):
            step(data(4, seed=i))
            if i % 2 == 1:
                opt.step()
                opt.zero_grad(set_to_none=set_to_none)
        finals.append([p.detach().numpy().copy() for p in model.parameters()])
    for c, e in zip(finals[1], finals[0], strict=True):
        close(c, e, "parameters after accumulated steps")


def test_replaced_parameter_is_not_stale():
    model = net()
    cm = tg.compile(model)
    x = data(4)
    cm(x)
    model.fc2.bias = nn.Parameter(tg.tensor(np.full(3, 10.0)))
    assert_same(forward_backward(model, cm, x), forward_backward(model, model, x))


def test_a_replaced_submodule_without_parameters_recompiles():
    model = net()
    cm = tg.compile(model)
    x = data(4)
    cm(x)
    model.drop = nn.Tanh()  # the same parameters, another forward
    assert_same(forward_backward(model, cm, x), forward_backward(model, model, x))
    assert "module drop: Dropout -> Tanh" in cm.recompile_reasons[0]


MODEL_SURGERY = {
    "a submodule without parameters": lambda model: setattr(model, "drop", nn.Tanh()),
    "a parameter the optimizer does not hold": lambda model: setattr(
        model.fc2, "bias", nn.Parameter(tg.tensor(np.full(3, 0.5)))
    ),
    "a layer the optimizer does not hold": lambda model: setattr(
        model, "fc2", nn.Linear(16, 3).double()
    ),
}


@pytest.mark.parametrize("surgery", MODEL_SURGERY.values(), ids=MODEL_SURGERY.keys())
def test_a_whole_step_follows_its_model_through_surgery_like_eager(surgery, training_step):
    losses, finals = [], []
    for compiled in (False, True):
        model = net()
        step = training_step(model, optim.SGD(model.parameters(), lr=0.1))
        step = tg.compile(step) if compiled else step
        x, y = data(6), tg.tensor([0, 1, 2, 0, 1, 2])
        run = [step(x, y).item() for _ in range(2)]
        tg.manual_seed(5)
        surgery(model)
        run += [step(x, y).item() for _ in range(2)]
        losses.append(run)
        finals.append([p.detach().numpy().copy() for p in model.parameters()])
    close(np.array(losses[1]), np.array(losses[0]), "losses")
    for c, e in zip(finals[1], finals[0], strict=True):
        close(c, e, "parameters")


def test_optimizer_load_state_dict_is_seen_by_a_compiled_step():
    finals = []
    for compiled in (False, True):
        model = net()
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

        def train_step(x, model=model, opt=opt):
            opt.zero_grad()
            loss = (model(x) ** 2).mean()
            loss.backward()
            opt.step()
            return loss

        step = tg.compile(train_step) if compiled else train_step
        for i in range(2):
            step(data(4, seed=i))
        checkpoint = (model.state_dict(), opt.state_dict())
        for i in range(2, 4):
            step(data(4, seed=i))
        model.load_state_dict(checkpoint[0])
        opt.load_state_dict(checkpoint[1])
        step(data(4, seed=9))
        finals.append((model, opt))
    (model_e, opt_e), (model_c, opt_c) = finals
    for p, q in zip(model_c.parameters(), model_e.parameters(), strict=True):
        close(p, q, "parameters")
        close(opt_c.state[p]["momentum_buffer"], opt_e.state[q]["momentum_buffer"], "momentum")


def test_a_plain_argument_is_guarded_by_type_as_well_as_value():
    # 2 == 2.0, but an integer tensor times 2 stays integer and times 2.0 does not
    def scaled(x, s):
        return x * s

    compiled = tg.compile(scaled)
    x = tg.tensor([1, 2, 3])
    for s in (2, 2.0, 2, True):
        out, expected = compiled(x, s), scaled(x, s)
        assert out.dtype == expected.dtype
        np.testing.assert_array_equal(out.numpy(), expected.numpy())
    assert "input 1: type int -> float" in compiled.recompile_reasons[0]


def test_a_tensor_where_a_plain_argument_was_recompiles():
    # (the guard must not compare a tensor of several elements with the plain value)
    def scaled(x, s):
        return x * s

    compiled = tg.compile(scaled)
    x = tg.tensor([1.0, 2.0, 3.0])
    compiled(x, 2.0)
    s = tg.tensor([1.0, 2.0, 3.0])
    np.testing.assert_array_equal(compiled(x, s).numpy(), [1.0, 4.0, 9.0])
    assert compiled.recompile_reasons[0] == "input 1: float 2.0 -> tensor float32[3]"


# Names a whole step finds its state by, bound to new objects between calls (a notebook cell
# run again): the next call trains what the names hold now, as the eager step would.
model_global = None
opt_global = None


def global_step(x, y):
    return train_step(model_global, opt_global, x, y)


class Trainer:
    def __init__(self, model):
        self.model = model
        self.opt = optim.SGD(model.parameters(), lr=0.1)

    def step(self, x, y):
        return train_step(self.model, self.opt, x, y)


def rebind_globals(model):
    global model_global, opt_global
    model_global, opt_global = model, optim.SGD(model.parameters(), lr=0.1)
    return global_step


def rebind_trainer_attributes():
    trainer = Trainer(net())

    def make(model):
        trainer.model, trainer.opt = model, optim.SGD(model.parameters(), lr=0.1)
        return trainer.step

    return make


def rebind_closure_variables():
    model = opt = None

    def step(x, y):
        return train_step(model, opt, x, y)

    def make(new_model):
        nonlocal model, opt
        model, opt = new_model, optim.SGD(new_model.parameters(), lr=0.1)
        return step

    return make


REBINDINGS = {
    "globals": lambda: rebind_globals,
    "closure variables": rebind_closure_variables,
    "a trainer's attributes": rebind_trainer_attributes,
}


@pytest.mark.parametrize("rebinding", REBINDINGS.values(), ids=REBINDINGS.keys())
def test_a_step_follows_names_bound_to_a_new_model(rebinding):
    x, y = data(6), tg.tensor([0, 1, 2, 0, 1, 2])
    make = rebinding()
    first = make(net())
    compiled = tg.compile(first)
    for _ in range(2):
        compiled(x, y)
    fresh = net()
    step = make(fresh)  # the same function (or method) reads the new model and optimizer now
    before = [p.detach().numpy().copy() for p in fresh.parameters()]
    loss = compiled(x, y).item()
    moved = [p.detach().numpy() for p in fresh.parameters()]
    assert all(not np.array_equal(b, m) for b, m in zip(before, moved, strict=True))
    eager_step = make(net())  # a twin of the fresh model, in eager mode
    assert eager_step == step
    close(loss, eager_step(x, y).item(), "loss of the new model's first step")
    assert "binding" in compiled.recompile_reasons[-1]
