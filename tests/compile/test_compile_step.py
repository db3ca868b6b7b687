"""Whole-step compile: a function calling opt.zero_grad(), loss.backward(), opt.step() is traced
into one generated function; after every compiled step everything observable equals the eager
step: the returned loss, the parameters, each parameter's .grad and the optimizer state
(momentum buffers; Adam's step count and moments)."""

from __future__ import annotations

import numpy as np
import pytest
from compile_zoo import train_step

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim
from tracegrad.passes.memory import Pooled

TOL = 1e-10
STEPS = 20

OPTIMIZERS = {
    "sgd_momentum_nesterov": lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
    "sgd_momentum_dampening_wd": lambda ps: optim.SGD(
        ps, lr=0.05, momentum=0.8, dampening=0.1, weight_decay=0.01
    ),
    "adam": lambda ps: optim.Adam(ps, lr=0.01),
    "adam_wd": lambda ps: optim.Adam(ps, lr=0.01, betas=(0.8, 0.99), weight_decay=0.05),
    "adamw": lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.1),
}


def close(actual, expected, what=""):
    actual = actual.detach().numpy() if isinstance(actual, tg.Tensor) else actual
    expected = expected.detach().numpy() if isinstance(expected, tg.Tensor) else expected
    np.testing.assert_allclose(actual, expected, rtol=TOL, atol=TOL, err_msg=what)


def batches(n, shape, classes, seed=5):
    rng = np.random.default_rng(seed)
    return [
        (tg.tensor(rng.standard_normal(shape)), tg.tensor(rng.integers(0, classes, shape[0])))
        for _ in range(n)
    ]


def assert_same_state(model_c, opt_c, model_e, opt_e):
    """Parameters, .grad and optimizer state of two runs are equal."""
    named_e = dict(model_e.named_parameters())
    for name, p in model_c.named_parameters():
        q = named_e[name]
        close(p, q, f"parameter {name}")
        assert (p.grad is None) == (q.grad is None), f"{name}.grad presence"
        if q.grad is not None:
            assert p.grad.dtype == q.grad.dtype
            close(p.grad, q.grad, f"{name}.grad")
    params_c = [p for g in opt_c.param_groups for p in g["params"]]
    params_e = [p for g in opt_e.param_groups for p in g["params"]]
    for i, (p, q) in enumerate(zip(params_c, params_e, strict=True)):
        state_c, state_e = opt_c.state.get(p, {}), opt_e.state.get(q, {})
        assert state_c.keys() == state_e.keys(), f"optimizer state keys of parameter {i}"
        for key, value in state_e.items():
            got = state_c[key]
            if isinstance(value, tg.Tensor):
                assert isinstance(got, tg.Tensor), key
                assert got.dtype == value.dtype, f"{key} dtype"
                assert tuple(got.shape) == tuple(value.shape), key
                close(got, value, f"optimizer state {key} of parameter {i}")
            else:
                assert got == value, key


def mlp(dtype=tg.float64):
    tg.manual_seed(21)
    layers = [nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)]
    return nn.Sequential(*layers).to(dtype)


def train(make_step, make_opt, compiled, passes="default", steps=STEPS):
    model = mlp()
    opt = make_opt(model.parameters())
    train_step = make_step(model, opt)
    step = tg.compile(train_step, passes=passes) if compiled else train_step
    losses = []
    for x, y in batches(steps, (5, 6), 3):
        loss = step(x, y)
        assert isinstance(loss, tg.Tensor) and loss.ndim == 0
        losses.append(loss.item())
    return model, opt, np.array(losses), step


@pytest.mark.parametrize("passes", ["default", None], ids=["default", "unoptimized"])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_compiled_training_steps_equal_eager(opt_name, passes, training_step):
    make_opt = OPTIMIZERS[opt_name]
    model_e, opt_e, losses_e, _ = train(training_step, make_opt, compiled=False)
    model_c, opt_c, losses_c, step = train(training_step, make_opt, compiled=True, passes=passes)
    close(losses_c, losses_e, "losses, step by step")
    assert_same_state(model_c, opt_c, model_e, opt_e)
    if opt_name.startswith("adam"):
        for p in model_c.parameters():
            assert opt_c.state[p]["step"].item() == STEPS
    # Parameters and state are inputs and updates of the step graph, never constants.
    graph = step.graph
    assert len(graph.updates) >= len(list(model_c.parameters()))
    constant_shapes = {tuple(n.outputs[0].shape) for n in graph.nodes if n.op == "constant"}
    assert (12, 6) not in constant_shapes and (3, 8) not in constant_shapes


def test_compiled_step_matches_eager_at_every_step():
    """Losses and full state after each of the first steps (the first compile happens with
    no .grad and empty optimizer state, the next one with both)."""
    runs = []
    for compiled in (False, True):
        model = mlp()
        opt = optim.Adam(model.parameters(), lr=0.02)

        def train_step(x, y, model=model, opt=opt):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

        runs.append((model, opt, tg.compile(train_step) if compiled else train_step))
    (model_e, opt_e, eager), (model_c, opt_c, compiled) = runs
    for x, y in batches(4, (5, 6), 3, seed=8):
        close(compiled(x, y), eager(x, y), "loss")
        assert_same_state(model_c, opt_c, model_e, opt_e)


def test_step_that_only_calls_backward_leaves_grads():
    results = []
    for compiled in (False, True):
        model = mlp()

        def grads_only(x, y, model=model):
            model.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        step = tg.compile(grads_only) if compiled else grads_only
        losses = [step(x, y).item() for x, y in batches(3, (5, 6), 3)]
        results.append((model, losses))
    (model_e, losses_e), (model_c, losses_c) = results
    close(np.array(losses_c), np.array(losses_e))
    for p, q in zip(model_c.parameters(), model_e.parameters(), strict=True):
        assert p.grad is not None
        close(p.grad, q.grad, ".grad after backward-only steps")
        close(p, q, "parameters are not changed")


def test_step_without_zero_grad_accumulates_like_eager():
    results = []
    for compiled in (False, True):
        model = mlp()
        opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.5)

        def accumulate(x, y, model=model, opt=opt):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

        step = tg.compile(accumulate) if compiled else accumulate
        losses = [step(x, y).item() for x, y in batches(5, (5, 6), 3)]
        results.append((model, opt, losses))
    (model_e, opt_e, losses_e), (model_c, opt_c, losses_c) = results
    close(np.array(losses_c), np.array(losses_e))
    assert_same_state(model_c, opt_c, model_e, opt_e)


class ReshapedScale(nn.Module):
    """A (2, 3) parameter used reshaped: its gradient is a view of the (6,) sum the
    backward computes."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(tg.randn(2, 3, dtype=tg.float64))
        self.head = nn.Linear(6, 3).double()

    def forward(self, x):
        return self.head(x * self.scale.reshape(6))


def test_grads_that_are_views_of_program_memory_accumulate_like_eager():
    """A .grad that is a view of one planned buffer is kept without a copy, and later steps
    that accumulate into it (another compiled step, without zero_grad) match eager."""
    results = []
    for compiled in (False, True):
        tg.manual_seed(3)
        model = ReshapedScale()
        opt = optim.SGD(model.parameters(), lr=0.05)

        def accumulate(x, y, model=model, opt=opt):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

        def fresh(x, y, model=model, opt=opt):
            opt.zero_grad()
            return accumulate(x, y)

        steps = [tg.compile(f) if compiled else f for f in (fresh, accumulate)]
        data = batches(4, (5, 6), 3)
        losses = [steps[min(i, 1)](x, y).item() for i, (x, y) in enumerate(data)]
        results.append((model, opt, losses, steps[0]))
    (model_e, opt_e, losses_e, _), (model_c, opt_c, losses_c, fresh_step) = results
    close(np.array(losses_c), np.array(losses_e))
    assert_same_state(model_c, opt_c, model_e, opt_e)
    fresh_step(*batches(1, (5, 6), 3)[0])
    gradient, viewed = planned_grads(fresh_step.latest)[id(model_c.scale)]
    assert isinstance(gradient, Pooled) and viewed, "the plan: a view of a pooled buffer"


def planned_grads(spec) -> dict[int, tuple]:
    """id(tensor) -> (the memory the step's plan gives its new .grad, whether as a view),
    for every .grad the compiled step ``spec`` stores (its last outputs are the stored
    values, one per sink)."""
    fn, graph = spec.program.parts[0]
    stored = graph.outputs[len(graph.outputs) - len(spec.sinks) :]
    return {
        id(sink.owner): (fn.plan.memory_of(value), fn.plan.root[value] is not value)
        for sink, value in zip(spec.sinks, stored, strict=True)
        if sink.kind == "grad"
    }


def test_backward_only_without_zero_grad_accumulates_like_eager():
    results = []
    for compiled in (False, True):
        model = mlp()

        def grads(x, y, model=model):
            F.cross_entropy(model(x), y).backward()

        step = tg.compile(grads) if compiled else grads
        for x, y in batches(3, (5, 6), 3):
            assert step(x, y) is None
        results.append(model)
    for p, q in zip(results[1].parameters(), results[0].parameters(), strict=True):
        close(p.grad, q.grad, "accumulated .grad")


def test_model_and_optimizer_passed_as_arguments():
    results = []
    for compiled in (False, True):
        model = mlp()
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        step = tg.compile(train_step) if compiled else train_step
        losses = [step(model, opt, x, y).item() for x, y in batches(6, (5, 6), 3)]
        results.append((model, opt, losses))
    (model_e, opt_e, losses_e), (model_c, opt_c, losses_c) = results
    close(np.array(losses_c), np.array(losses_e))
    assert_same_state(model_c, opt_c, model_e, opt_e)


@pytest.mark.parametrize("passes", ["default", None], ids=["default", "unoptimized"])
def test_a_parameter_passed_in_and_updated_in_place_is_updated_like_eager(passes):
    def sgd_step(w, x, y):
        loss = ((x @ w - y) ** 2).mean()
        loss.backward()
        with tg.no_grad():
            w.sub_(0.1 * w.grad)
        w.grad = None
        return loss

    rng = np.random.default_rng(4)
    x, y = tg.tensor(rng.standard_normal((8, 3))), tg.tensor(rng.standard_normal(8))
    compiled = tg.compile(sgd_step, passes=passes)
    w_e, w_c = (tg.zeros(3, dtype=tg.float64, requires_grad=True) for _ in range(2))
    for _ in range(4):
        close(compiled(w_c, x, y), sgd_step(w_e, x, y))
        close(w_c, w_e)
        assert w_c.version == w_e.version and w_c.grad is None
    assert len(compiled.specializations) == 1


def test_step_returns_what_the_function_returns():
    model = mlp()
    opt = optim.SGD(model.parameters(), lr=0.1)

    def train_step(x, y):
        opt.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        return {"loss": loss, "logits": logits, "n": 5}

    (x, y), *_ = batches(1, (5, 6), 3)
    before = model(x).detach().numpy().copy()
    out = tg.compile(train_step)(x, y)
    assert set(out) == {"loss", "logits", "n"} and out["n"] == 5
    close(out["logits"], before, "logits are computed before the update")
    assert not np.allclose(model(x).detach().numpy(), before), "the parameters were updated"


def test_dropout_and_custom_function_in_a_compiled_step(zoo):
    """Training-mode dropout draws the same masks as eager under one seed; a custom
    Function's straight-through backward is used inside the whole step."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = nn.Linear(6, 10)
            self.drop = nn.Dropout(0.3)
            self.fc2 = nn.Linear(10, 3)

        def forward(self, x):
            return self.fc2(self.drop(zoo.SignSTE.apply(self.fc1(x))))

    results = []
    for compiled in (False, True):
        tg.manual_seed(4)
        model = Net().double()
        opt = optim.SGD(model.parameters(), lr=0.1)

        def train_step(x, y, model=model, opt=opt):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

        step = tg.compile(train_step) if compiled else train_step
        tg.manual_seed(100)
        losses = [step(x, y).item() for x, y in batches(6, (5, 6), 3)]
        results.append((model, opt, losses))
    (model_e, opt_e, losses_e), (model_c, opt_c, losses_c) = results
    close(np.array(losses_c), np.array(losses_e))
    assert_same_state(model_c, opt_c, model_e, opt_e)
    assert np.abs(model_c.fc1.weight.grad.numpy()).max() > 1e-4  # straight-through reached fc1


def test_compiled_cnn_step_with_momentum(zoo):
    results = []
    for compiled in (False, True):
        setup = zoo.build("cnn")
        model = setup.model
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

        def train_step(x, y, model=model, opt=opt):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss

        step = tg.compile(train_step) if compiled else train_step
        losses = [step(x, y).item() for x, y in batches(4, (4, 1, 10, 10), 5)]
        results.append((model, opt, losses))
    (model_e, opt_e, losses_e), (model_c, opt_c, losses_c) = results
    close(np.array(losses_c), np.array(losses_e))
    assert_same_state(model_c, opt_c, model_e, opt_e)


def test_compiled_transformer_step_with_the_attention_and_loss_rewrites(zoo):
    """A whole AdamW step of a causal transformer equals eager, with the rewrites in it:
    keys-major masked softmax and its gradient, and the loss through log-probabilities."""
    results = []
    for compiled in (False, True):
        setup = zoo.build("transformer")
        tg.manual_seed(5)
        # 4 heads of 4 over 8 positions: the 1/sqrt(d) scale moves onto q (smaller than the
        # scores), which leaves the scores a plain product for the keys-major rewrite.
        model = zoo.Transformer(heads=4).double()
        opt = optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.1)

        def train_step(tokens, target, model=model, opt=opt, loss_of=setup.loss):
            opt.zero_grad()
            loss = loss_of(model(tokens))
            loss.backward()
            opt.step()
            return loss

        step = tg.compile(train_step) if compiled else train_step
        losses = [step(*setup.inputs, setup.target).item() for _ in range(4)]
        results.append((model, opt, losses, step))
    (model_e, opt_e, losses_e, _), (model_c, opt_c, losses_c, step) = results
    close(np.array(losses_c), np.array(losses_e))
    assert_same_state(model_c, opt_c, model_e, opt_e)
    graph = step.latest.program.graph
    ops = {n.op for n in graph.nodes}
    assert {"masked_softmax", "masked_softmax_grad", "nll_loss", "log_softmax_nll_grad"} <= ops
    assert not {"softmax", "softmax_grad", "cross_entropy", "cross_entropy_grad"} & ops
    down_columns = [n.attrs["dim"] for n in graph.nodes if n.op.startswith("masked_softmax")]
    assert down_columns and all(d == 2 for d in down_columns)  # keys-major (B, H, Tk, Tq)


class Trainer:
    """Holds its model and optimizer: the compiled step is a bound method reaching them
    through ``self`` (no closure, no global)."""

    def __init__(self):
        tg.manual_seed(9)
        self.model = nn.Sequential(nn.Linear(6, 10), nn.Dropout(0.5), nn.Linear(10, 3)).double()
        self.opt = optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9)

    def step(self, x, y):
        self.opt.zero_grad()
        loss = F.cross_entropy(self.model(x), y)
        loss.backward()
        self.opt.step()
        return loss

    def accumulate(self, x, y):
        F.cross_entropy(self.model(x), y).backward()


def test_bound_method_step_follows_train_eval_switches():
    eager, compiled = Trainer(), Trainer()
    step = tg.compile(compiled.step)
    for i, (x, y) in enumerate(batches(6, (5, 6), 3)):
        mode = i < 2 or i == 4  # train, train, eval, eval, train, eval
        eager.model.train(mode)
        compiled.model.train(mode)
        tg.manual_seed(i)
        want = eager.step(x, y)
        tg.manual_seed(i)
        close(step(x, y), want, f"loss at step {i} (training={mode})")
    assert_same_state(compiled.model, compiled.opt, eager.model, eager.opt)


def test_bound_method_without_zero_grad_accumulates():
    eager, compiled = Trainer(), Trainer()
    for t in (eager, compiled):
        t.model.eval()
    step = tg.compile(compiled.accumulate)
    for x, y in batches(3, (5, 6), 3):
        eager.accumulate(x, y)
        step(x, y)
    for p, q in zip(compiled.model.parameters(), eager.model.parameters(), strict=True):
        close(p.grad, q.grad, "accumulated .grad")


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 1)

    def forward(self, x):
        return self.fc(x).squeeze(1)


REGRESSOR = Regressor().double()
REGRESSOR_OPT = optim.SGD(REGRESSOR.parameters(), lr=0.01)


def test_step_naming_a_module_class():
    """A step whose code names a Module subclass (a global, like the instance it uses):
    the class is not mistaken for a module instance."""

    def train_step(x, y):
        assert isinstance(REGRESSOR, Regressor)
        REGRESSOR_OPT.zero_grad()
        loss = F.mse_loss(REGRESSOR(x), y)
        loss.backward()
        REGRESSOR_OPT.step()
        return loss

    step = tg.compile(train_step)
    x = tg.tensor(np.linspace(-1, 1, 30).reshape(5, 6))
    y = tg.tensor(np.arange(5.0))
    losses = [step(x, y).item() for _ in range(3)]
    assert losses[0] > losses[1] > losses[2]


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 8)
        self.gate = nn.Parameter(tg.tensor(np.linspace(-1, 1, 8)))
        self.a = nn.Linear(8, 3)
        self.b = nn.Linear(8, 3)

    def forward(self, x):
        h = self.body(x).tanh() * self.gate.detach().sign()
        return self.a(h), self.b(h)


def test_parameters_without_gradient_keep_grad_none_in_a_step():
    """Eager semantics inside a whole step: head b is unused and gate is read detached, so
    their .grad stays None and the optimizer (with weight decay) leaves them alone."""
    results = []
    for compiled in (False, True):
        tg.manual_seed(2)
        model = TwoHeads().double()
        opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)

        def train_step(x, y, model=model, opt=opt):
            opt.zero_grad()
            loss = F.cross_entropy(model(x)[0], y)
            loss.backward()
            opt.step()
            return loss

        step = tg.compile(train_step) if compiled else train_step
        for x, y in batches(3, (5, 6), 3):
            step(x, y)
        results.append((model, opt))
    (model_e, opt_e), (model_c, opt_c) = results
    assert model_e.b.weight.grad is None and model_e.gate.grad is None
    assert_same_state(model_c, opt_c, model_e, opt_e)


def test_adam_step_uses_fused_updates_in_place(training_step):
    """Adam's moments and parameter updates are one kernel each, written into the state and
    parameter arrays themselves."""
    model = mlp()
    opt = optim.Adam(model.parameters(), lr=0.01)
    step = tg.compile(training_step(model, opt))
    for x, y in batches(3, (5, 6), 3):
        step(x, y)
    ops = [n.op for n in step.graph.nodes]
    n_params = len(list(model.parameters()))
    assert ops.count("lerp") == ops.count("ema_square") == ops.count("adam_step") == n_params
    assert "out=model_0_weight)" in step.code  # the parameter array is the destination


def test_adam_step_count_is_incremented_in_its_own_array(training_step):
    """The 0-d step count is a state updated by a ufunc: written where it lives (no copy back
    after the run), and it still counts the steps."""
    model = mlp()
    opt = optim.Adam(model.parameters(), lr=0.01)
    step = tg.compile(training_step(model, opt))
    for x, y in batches(3, (5, 6), 3):
        step(x, y)
    assert "out=opt_step0)" in step.code
    counts = [opt.state[p]["step"] for p in model.parameters()]
    arrays = [c.numpy() for c in counts]
    for x, y in batches(2, (5, 6), 3, seed=7):
        step(x, y)
    assert [c.item() for c in counts] == [5.0] * len(counts)
    assert all(np.shares_memory(c.numpy(), a) for c, a in zip(counts, arrays, strict=True))


@pytest.mark.parametrize("passes", ["default", None], ids=["default", "unoptimized"])
def test_updates_written_in_place_are_not_copied_back(training_step, passes):
    """With the memory plan, Adam writes every parameter and state array where it lives: the
    runner copies none back and the arrays stay the same; without it, each is copied."""
    *_, step = train(training_step, OPTIMIZERS["adam"], compiled=True, passes=passes)
    spec = step.latest
    written = spec.updated_in_place
    everything = frozenset(range(len(spec.update_targets)))
    assert written == (everything if passes else frozenset())
    arrays = [t.detach().numpy() for t in spec.update_targets]
    for x, y in batches(2, (5, 6), 3, seed=7):
        step(x, y)
    targets = [t.detach().numpy() for t in spec.update_targets]
    assert all(np.shares_memory(t, a) for t, a in zip(targets, arrays, strict=True))


def test_grads_live_in_the_programs_memory_without_a_copy(training_step):
    """A .grad the step created, which nobody else holds, lives in the same memory from step
    to step, holds each step's gradient (equal to eager), and keeps one buffer: the run
    writes it, nothing copies it. (A .grad the user keeps keeps its values instead: see
    test_grads_kept_from_earlier_steps_keep_their_values.)"""
    model_e, opt_e, _, _ = train(training_step, OPTIMIZERS["adam"], compiled=False, steps=3)
    model_c, opt_c, _, step = train(training_step, OPTIMIZERS["adam"], compiled=True, steps=3)
    memory = [p.grad.numpy() for p in model_c.parameters()]  # (the arrays, not the tensors)
    for x, y in batches(3, (5, 6), 3, seed=9):
        for model, opt, fn in ((model_e, opt_e, None), (model_c, opt_c, step)):
            if fn is None:
                opt.zero_grad()
                F.cross_entropy(model(x), y).backward()
                opt.step()
            else:
                fn(x, y)
    assert_same_state(model_c, opt_c, model_e, opt_e)
    # each .grad is in the same memory, holding the last step's gradient
    for p, array in zip(model_c.parameters(), memory, strict=True):
        assert np.shares_memory(p.grad.numpy(), array)
        np.testing.assert_array_equal(p.grad.numpy(), array)
    # the plan puts each .grad in a pooled buffer, or a view of one (a weight's gradient
    # computed as rows @ rows)
    memories = planned_grads(step.latest).values()
    assert all(isinstance(memory, Pooled) for memory, _ in memories)


def test_a_grad_the_user_placed_keeps_its_memory():
    """.grad tensors that are views of one flat user buffer (as for gradient bucketing) are
    written into, never replaced, so the flat buffer holds every step's gradients."""
    model = mlp()
    params = list(model.parameters())
    flat = np.zeros(sum(p.numel() for p in params))
    start = 0
    for p in params:
        p.grad = tg.from_numpy(flat[start : start + p.numel()].reshape(p.shape))
        start += p.numel()

    @tg.compile
    def grads(x, y):
        for p in params:
            p.grad.zero_()
        F.cross_entropy(model(x), y).backward()

    x, y = batches(1, (5, 6), 3)[0]
    grads(x, y)
    grads(x, y)
    eager = mlp()
    F.cross_entropy(eager(x), y).backward()
    expected = np.concatenate([q.grad.numpy().ravel() for q in eager.parameters()])
    np.testing.assert_allclose(flat, expected, rtol=TOL, atol=TOL)


def test_a_grad_in_program_memory_read_by_the_next_run_is_read_intact():
    """The step reads the previous .grad (its norm) before zeroing it: the .grad lives in the
    program's own memory, which the run reuses, so the run must read it first or a copy."""
    results = []
    for compiled in (False, True):
        model = mlp()
        opt = optim.SGD(model.parameters(), lr=0.1)

        def train_step(x, y, model=model, opt=opt):
            w = model[0].weight
            previous = (w.grad * w.grad).sum() if w.grad is not None else tg.zeros(())
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y) + 1e-3 * previous
            loss.backward()
            opt.step()
            return previous

        step = tg.compile(train_step) if compiled else train_step
        results.append([step(x, y).item() for x, y in batches(5, (5, 6), 3)])
    close(np.array(results[1]), np.array(results[0]), "norm of the previous step's gradient")


@pytest.mark.parametrize("inside", [False, True], ids=["zero_grad_outside", "zero_grad_inside"])
def test_grads_kept_from_earlier_steps_keep_their_values(inside):
    """zero_grad, outside the compiled step or inside it, drops each .grad; a user who keeps
    them (to log or average them) sees each step's own gradient in its own tensor, as in
    PyTorch: the memory a step hands out is not handed out again while a tensor living in it
    is alive."""
    runs = []
    for compiled in (False, True):
        model = mlp()

        def grads(x, y, model=model):
            if inside:
                model.zero_grad()
            F.cross_entropy(model(x), y).backward()

        step = tg.compile(grads) if compiled else grads
        kept = []
        for x, y in batches(4, (5, 6), 3, seed=11):
            if not inside:
                model.zero_grad()  # set_to_none: a new .grad each step
            step(x, y)
            kept.append([p.grad for p in model.parameters()])
        assert all(a is not b for a, b in zip(kept[0], kept[1], strict=True))
        runs.append([[g.numpy().copy() for g in step_grads] for step_grads in kept])
        if compiled:
            now = [[g.numpy() for g in step_grads] for step_grads in kept]
            for a, b in zip(runs[-1], now, strict=True):
                for x_, y_ in zip(a, b, strict=True):
                    np.testing.assert_array_equal(x_, y_)
    for eager_step, compiled_step in zip(*runs, strict=True):
        for want, got in zip(eager_step, compiled_step, strict=True):
            close(got, want, "a kept .grad")


def test_two_grads_of_one_value_get_memory_of_their_own():
    """Both parameters' gradients are the same computed value (CSE makes them one): each
    .grad is its own tensor, not two views of one buffer."""
    a = tg.zeros(3, 4, dtype=tg.float64, requires_grad=True)
    b = tg.zeros(3, 4, dtype=tg.float64, requires_grad=True)

    @tg.compile
    def grads(x):
        a.grad = b.grad = None
        h = x.tanh()
        ((a * h).sum() + (b * h).sum()).backward()

    x = tg.tensor(np.random.default_rng(3).standard_normal((3, 4)))
    for _ in range(2):
        grads(x)
        close(a.grad, np.tanh(x.numpy()))
        close(b.grad, np.tanh(x.numpy()))
        assert not np.shares_memory(a.grad.numpy(), b.grad.numpy())
    a.grad.mul_(2.0)
    close(b.grad, np.tanh(x.numpy()))
