"""SyncBatchNorm in one process: its synchronized path (forced, the all_reduce being the
identity here) against PyTorch's formulas, its gradients against finite differences, eager
against compiled (the module and a whole step), convert_sync_batchnorm, and its errors. Two
processes against one on the global batch: test_mpiexec.py (ddp_equivalence.py cnn_bn)."""

from __future__ import annotations

import numpy as np
import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn
from tracegrad.autograd import gradcheck
from tracegrad.nn import sync_batchnorm
from tracegrad.nn.sync_batchnorm import sync_batch_norm


@pytest.fixture
def synced(monkeypatch):
    """SyncBatchNorm takes its synchronized path, as with several processes."""
    monkeypatch.setattr(sync_batchnorm, "_world_size", lambda: 2)


def close(got, want, what, tol=1e-12):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, what
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol, err_msg=what)


SHAPES = [(6, 3), (4, 3, 5), (2, 3, 4, 4)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_the_synchronized_path_matches_torch(synced, shape, momentum):
    """Three training calls then one in eval mode: outputs, input/weight/bias gradients,
    running statistics and the batch count, as torch.nn.SyncBatchNorm (one process)."""
    torch = pytest.importorskip("torch")
    ours = nn.SyncBatchNorm(3, momentum=momentum).double()
    theirs = torch.nn.SyncBatchNorm(3, momentum=momentum).double()
    rng = np.random.default_rng(1)
    with tg.no_grad():
        ours.weight.copy_(tg.tensor(rng.normal(size=3)))
        ours.bias.copy_(tg.tensor(rng.normal(size=3)))
    theirs.load_state_dict({k: torch.tensor(v.numpy()) for k, v in ours.state_dict().items()})
    for call, training in enumerate([True, True, True, False]):
        ours.train(training)
        theirs.train(training)
        x, g = rng.normal(size=shape) * 2 + 1, rng.normal(size=shape)
        mine, reference = tg.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
        out, expected = ours(mine), theirs(reference)
        (out * tg.tensor(g)).sum().backward()
        (expected * torch.tensor(g)).sum().backward()
        close(out.detach().numpy(), expected.detach().numpy(), f"call {call} output")
        close(mine.grad.numpy(), reference.grad.numpy(), f"call {call} input gradient")
        for name, value in theirs.state_dict().items():
            close(ours.state_dict()[name].numpy(), value.numpy(), f"call {call} {name}")
        close(ours.weight.grad.numpy(), theirs.weight.grad.numpy(), f"call {call} weight grad")
        close(ours.bias.grad.numpy(), theirs.bias.grad.numpy(), f"call {call} bias grad")


@pytest.mark.parametrize("shape", [(5, 2), (3, 2, 2, 3)])
def test_the_synchronized_statistics_pass_gradcheck(shape):
    rng = np.random.default_rng(2)
    inputs = [tg.tensor(rng.normal(size=size), requires_grad=True) for size in (shape, (2,), (2,))]
    running = tg.zeros(2, dtype=tg.float64), tg.ones(2, dtype=tg.float64)
    assert gradcheck(lambda x, w, b: sync_batch_norm(x, *running, w, b, 0.1, 1e-5), inputs)
    assert gradcheck(lambda x: sync_batch_norm(x, None, None, None, None, 0.1, 1e-5), inputs[:1])


def test_with_one_process_it_is_batch_norm_without_a_collective():
    tg.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).double()
    synced_model = nn.SyncBatchNorm.convert_sync_batchnorm(
        nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).double()
    )
    synced_model.load_state_dict(plain.state_dict())
    x = tg.randn(4, 1, 5, 5, dtype=tg.float64)
    assert np.array_equal(synced_model(x).detach().numpy(), plain(x).detach().numpy())
    assert np.array_equal(synced_model[1].running_var.numpy(), plain[1].running_var.numpy())
    compiled = tg.compile(synced_model)
    compiled(x).sum().backward()
    assert "all_reduce" not in compiled.graph.op_counts()


def cnn():
    tg.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3),
        nn.SyncBatchNorm(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(27, 4),
        nn.SyncBatchNorm(4, momentum=None),
        nn.Linear(4, 2),
    ).double()


DATA = [
    (tg.tensor(np.random.default_rng(s).normal(size=(6, 1, 5, 5))), tg.tensor([0, 1, 1, 0, 1, 0]))
    for s in range(3)
]


def state(model) -> dict:
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("how", ["module", "step"])
def test_compiled_equals_eager(synced, how):
    """The compiled module (forward and backward) and a compiled whole SGD step leave the
    parameters, running statistics and gradients of eager training; each SyncBatchNorm is an
    all_reduce in the forward and one in the backward, out of the gradient buckets."""
    results = []
    for compiled in (False, True):
        model = cnn()
        opt = tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        forward = tg.compile(model) if compiled and how == "module" else model

        def train_step(x, y, forward=forward, opt=opt):
            opt.zero_grad()
            loss = F.cross_entropy(forward(x), y)
            loss.backward()
            opt.step()
            return loss

        step = tg.compile(train_step) if compiled and how == "step" else train_step
        for x, y in DATA:
            step(x, y)
        grads = {f"{n}.grad": p.grad.numpy().copy() for n, p in model.named_parameters()}
        results.append({**state(model), **grads})
    for name, value in results[0].items():
        close(results[1][name], value, name)
    graphs = [step.graph] if how == "step" else [forward.graph, forward.backward_graph]
    assert sum(g.op_counts().get("all_reduce", 0) for g in graphs) == 4
    assert all("all_reduce_start" not in g.op_counts() for g in graphs)


def test_convert_sync_batchnorm_keeps_the_tensors_and_keys():
    torch = pytest.importorskip("torch")
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3),
        nn.BatchNorm2d(2, affine=False),
        nn.Sequential(nn.Flatten(), nn.BatchNorm1d(18, momentum=None).double()),
        nn.LayerNorm(18),
    )
    model[1].eval()
    keys = list(model.state_dict())
    before = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert converted is model  # the container is kept, its children replaced
    first, second = converted[1], converted[2][1]
    assert type(first) is nn.SyncBatchNorm and type(second) is nn.SyncBatchNorm
    assert type(converted[3]) is nn.LayerNorm and type(converted[0]) is nn.Conv2d
    assert not first.training and second.training
    assert first.weight is None and not first.affine and second.momentum is None
    assert list(converted.state_dict()) == keys
    after = {**dict(converted.named_parameters()), **dict(converted.named_buffers())}
    assert after.keys() == before.keys() and all(after[k] is v for k, v in before.items())
    assert second.weight.dtype == tg.float64
    reference = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3),
        torch.nn.BatchNorm2d(2, affine=False),
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(18)),
        torch.nn.LayerNorm(18),
    )
    torch_converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(reference)
    assert list(torch_converted.state_dict()) == keys
    lone = nn.BatchNorm1d(3)
    assert type(nn.SyncBatchNorm.convert_sync_batchnorm(lone)) is nn.SyncBatchNorm


def test_bad_input_and_process_groups_are_clear_errors(synced):
    bn = nn.SyncBatchNorm(3)
    with pytest.raises(ValueError, match=r"expected at least 2D input \(got 1D input\)"):
        bn(tg.zeros(3))
    with pytest.raises(ValueError, match="input channels should be non-zero"):
        nn.SyncBatchNorm(0)(tg.zeros(2, 0))
    with pytest.raises(tg.ShapeError, match=r"\(3,\) per-channel parameters.*\(4, 2\)"):
        bn(tg.zeros(4, 2))
    with pytest.raises(ValueError, match="one process group"):
        nn.SyncBatchNorm(3, process_group="group")
