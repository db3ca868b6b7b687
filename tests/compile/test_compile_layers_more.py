"""The activations, normalization layers and losses of nn, compiled: outputs, gradients and
buffers equal eager ones, for a compiled module and for a whole compiled training step
(BatchNorm's running statistics and batch count included, in train and eval mode and across
switches), and equal PyTorch's."""

from __future__ import annotations

import numpy as np
import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim

TOL = 1e-11

# name -> (layer factory, input shape); each layer sits behind a Linear or Conv2d so that a
# parameter upstream receives the gradient through it
LAYERS = {
    "LeakyReLU": (lambda: nn.LeakyReLU(0.1), (5, 4)),
    "ELU": (lambda: nn.ELU(0.7), (5, 4)),
    "SiLU": (nn.SiLU, (5, 4)),
    "Softplus": (lambda: nn.Softplus(2.0, 1.0), (5, 4)),
    "Mish": (nn.Mish, (5, 4)),
    "Hardtanh": (lambda: nn.Hardtanh(-0.3, 0.4), (5, 4)),
    "ReLU6": (nn.ReLU6, (5, 4)),
    "PReLU": (lambda: nn.PReLU(4, 0.2), (5, 4)),
    "Softsign": (nn.Softsign, (5, 4)),
    "LogSigmoid": (nn.LogSigmoid, (5, 4)),
    "Identity": (nn.Identity, (5, 4)),
    "Unflatten": (lambda: nn.Unflatten(1, (2, 2)), (5, 4)),
    "BatchNorm1d": (lambda: nn.BatchNorm1d(4), (5, 4)),
    "BatchNorm1d_cumulative": (lambda: nn.BatchNorm1d(4, momentum=None), (5, 4)),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(4), (3, 2, 4, 4)),
    "BatchNorm2d_stateless": (
        lambda: nn.BatchNorm2d(4, affine=False, track_running_stats=False),
        (3, 2, 4, 4),
    ),
    "GroupNorm": (lambda: nn.GroupNorm(2, 4), (3, 2, 4, 4)),
    "InstanceNorm2d": (lambda: nn.InstanceNorm2d(4, affine=True), (3, 2, 4, 4)),
    "InstanceNorm2d_tracked": (
        lambda: nn.InstanceNorm2d(4, track_running_stats=True),
        (3, 2, 4, 4),
    ),
}


class Wrapped(nn.Module):
    def __init__(self, layer, shape):
        super().__init__()
        self.pre = nn.Conv2d(shape[1], 4, 1) if len(shape) == 4 else nn.Linear(shape[1], 4)
        self.layer = layer

    def forward(self, x):
        return self.layer(self.pre(x))


def build(name, dtype=tg.float64):
    factory, shape = LAYERS[name]
    tg.manual_seed(0)
    model = Wrapped(factory(), shape).to(dtype)
    for p in model.layer.parameters():  # off their initial values, so that errors show
        p.data = p.data + tg.tensor(np.random.default_rng(1).uniform(0.1, 0.5, tuple(p.shape)))
    return model, shape


def close(actual, expected, what, tol=TOL):
    np.testing.assert_allclose(
        np.asarray(actual), np.asarray(expected), rtol=tol, atol=tol, err_msg=what
    )


def run(model, target, shape, modes):
    """Calls in the given train/eval modes; returns per call the output, the input's and every
    parameter's gradient and every buffer afterwards."""
    rng = np.random.default_rng(2)
    records = []
    for training in modes:
        model.train(training)
        model.zero_grad()
        data = rng.standard_normal(shape) * 2 + 0.5
        x = tg.tensor(data.astype(model.pre.weight.dtype.np), requires_grad=True)
        out = target(x)
        (out * tg.tensor(rng.standard_normal(tuple(out.shape)))).sum().backward()
        record = {"out": out.detach().numpy().copy(), "x.grad": x.grad.numpy().copy()}
        record.update({f"{n}.grad": p.grad.numpy().copy() for n, p in model.named_parameters()})
        record.update({n: b.numpy().copy() for n, b in model.named_buffers()})
        records.append(record)
    return records


@pytest.mark.parametrize("passes", ["default", None], ids=["default", "unoptimized"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_compiled_layer_matches_eager(name, passes):
    modes = [True, True, False, True, False]
    eager, shape = build(name)
    expected = run(eager, eager, shape, modes)
    model, _ = build(name)
    compiled = tg.compile(model, passes=passes)
    actual = run(model, compiled, shape, modes)
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert a.keys() == e.keys()
        for key in e:
            close(a[key], e[key], f"call {i}: {key}")
    # train and eval are one specialization each
    assert len(compiled.recompile_reasons) <= 1, compiled.recompile_reasons


@pytest.mark.parametrize("name", ["Softplus", "Mish", "BatchNorm2d", "GroupNorm"])
def test_compiled_layer_matches_eager_in_float32(name):
    modes = [True, False, True]
    eager, shape = build(name, tg.float32)
    expected = run(eager, eager, shape, modes)
    model, _ = build(name, tg.float32)
    actual = run(model, tg.compile(model), shape, modes)
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        for key in e:
            assert a[key].dtype == e[key].dtype, key
            close(a[key], e[key], f"call {i}: {key}", tol=1e-5)


# --- losses --------------------------------------------------------------------------------------

LOSSES = {
    "NLLLoss": (lambda: nn.NLLLoss(tg.tensor([1.0, 2.0, 0.5, 1.5])), "classes_log"),
    "CrossEntropyLoss_weighted": (
        lambda: nn.CrossEntropyLoss(tg.tensor([1.0, 2.0, 0.5, 1.5]), label_smoothing=0.1),
        "classes",
    ),
    "BCELoss": (nn.BCELoss, "probabilities"),
    "BCEWithLogitsLoss": (
        lambda: nn.BCEWithLogitsLoss(pos_weight=tg.tensor([1.0, 2.0, 3.0, 0.5])),
        "probabilities_logits",
    ),
    "L1Loss": (nn.L1Loss, "values"),
    "SmoothL1Loss": (lambda: nn.SmoothL1Loss(beta=0.5), "values"),
    "HuberLoss": (lambda: nn.HuberLoss("sum", 0.7), "values"),
    "KLDivLoss": (lambda: nn.KLDivLoss("batchmean"), "distribution"),
}


class WithLoss(nn.Module):
    def __init__(self, loss, kind):
        super().__init__()
        self.linear, self.loss, self.kind = nn.Linear(3, 4), loss, kind

    def forward(self, x, target):
        h = self.linear(x)
        if self.kind in ("classes_log", "distribution"):
            h = h.log_softmax(1)
        elif self.kind == "probabilities":
            h = h.sigmoid()
        return self.loss(h, target)


def loss_target(kind, rng):
    if kind.startswith("classes"):
        return tg.tensor(np.array([0, 3, -100, 1, 2, 2]))
    if kind.startswith("probabilities"):
        return tg.tensor(rng.uniform(0, 1, (6, 4)))
    if kind == "distribution":
        return tg.tensor(rng.dirichlet(np.ones(4), 6))
    return tg.tensor(rng.standard_normal((6, 4)))


@pytest.mark.parametrize("name", list(LOSSES))
def test_compiled_loss_matches_eager(name):
    results = []
    for compiled in (False, True):
        factory, kind = LOSSES[name]
        tg.manual_seed(0)
        model = WithLoss(factory(), kind).double()
        target = tg.compile(model) if compiled else model
        rng = np.random.default_rng(3)
        losses = []
        for _ in range(2):
            model.zero_grad()
            loss = target(tg.tensor(rng.standard_normal((6, 3))), loss_target(kind, rng))
            loss.backward()
            losses.append(loss.item())
        results.append((losses, [p.grad.numpy().copy() for p in model.parameters()]))
    (losses_e, grads_e), (losses_c, grads_c) = results
    close(losses_c, losses_e, "losses")
    for c, e in zip(grads_c, grads_e, strict=True):
        close(c, e, "gradients")


# --- BatchNorm in a compiled training step -------------------------------------------------------


def bn_model(kind, momentum, library):
    """conv/linear - batch norm - relu - linear, the same initial weights in both libraries."""
    two_d = kind == "BatchNorm2d"
    layers = (
        [library.nn.Conv2d(2, 3, 3), library.nn.BatchNorm2d(3, momentum=momentum)]
        if two_d
        else [library.nn.Linear(5, 3), library.nn.BatchNorm1d(3, momentum=momentum)]
    )
    layers += [library.nn.ReLU(), library.nn.Flatten(), library.nn.Linear(12 if two_d else 3, 2)]
    return library.nn.Sequential(*layers).double()


def batches(kind, steps=7):
    rng = np.random.default_rng(4)
    shape = (6, 2, 4, 4) if kind == "BatchNorm2d" else (6, 5)
    return [(rng.standard_normal(shape) * 2 + 1, rng.integers(0, 2, 6)) for _ in range(steps)]


MODES = [True, True, False, True, False, False, True]  # eval is a pure forward here too


def train_tracegrad(kind, momentum, initial, compiled):
    model = bn_model(kind, momentum, tg)
    model.load_state_dict(initial)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    run_step = tg.compile(step) if compiled else step
    losses, states = [], []
    for (x, y), training in zip(batches(kind), MODES, strict=True):
        model.train(training)
        losses.append(run_step(tg.tensor(x), tg.tensor(y)).item())
        states.append({k: v.numpy().copy() for k, v in model.state_dict().items()})
    return losses, states, run_step


@pytest.mark.parametrize("kind", ["BatchNorm1d", "BatchNorm2d"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_in_a_compiled_step_matches_eager_and_torch(kind, momentum):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    reference = bn_model(kind, momentum, torch)
    initial = {k: v.numpy().copy() for k, v in reference.state_dict().items()}
    eager_losses, eager_states, _ = train_tracegrad(kind, momentum, initial, compiled=False)
    losses, states, step = train_tracegrad(kind, momentum, initial, compiled=True)

    opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for i, ((x, y), training) in enumerate(zip(batches(kind), MODES, strict=True)):
        reference.train(training)
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(reference(torch.tensor(x)), torch.tensor(y))
        loss.backward()
        opt.step()
        close(losses[i], eager_losses[i], f"step {i} loss, compiled vs eager")
        close(losses[i], loss.item(), f"step {i} loss, compiled vs PyTorch")
        for name, value in reference.state_dict().items():
            assert states[i][name].dtype == value.numpy().dtype, name
            close(states[i][name], eager_states[i][name], f"step {i} {name}, vs eager")
            close(states[i][name], value.numpy(), f"step {i} {name}, vs PyTorch")
    assert states[-1]["1.num_batches_tracked"] == sum(MODES)
    # the first call is traced with the momentum buffers (made ahead), then it compiles once
    # for eval mode: later switches between the modes reuse the specializations
    assert len(step.recompile_reasons) == 1, step.recompile_reasons
    assert "module model training: train mode -> eval mode" in step.recompile_reasons[0]


def test_batch_norm_compiled_module_updates_running_stats_without_recompiling():
    tg.manual_seed(0)
    eager, twin = nn.BatchNorm1d(3).double(), nn.BatchNorm1d(3).double()
    compiled = tg.compile(twin)
    rng = np.random.default_rng(5)
    for _ in range(4):
        x = tg.tensor(rng.standard_normal((4, 3)))
        close(compiled(x).detach().numpy(), eager(x).detach().numpy(), "output")
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        close(getattr(twin, name).numpy(), getattr(eager, name).numpy(), name)
    assert twin.num_batches_tracked.item() == 4
    assert not compiled.recompile_reasons
