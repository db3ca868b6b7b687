"""A compiled whole training step with DistributedDataParallel, in one process: the gradient
averages are nodes of its graph (``all_reduce``, grouped by the ``bucket`` pass, placed by
``overlap``), the identity here, so the step equals the plain model's; the collective ops'
values and errors. Two processes: test_mpiexec.py."""

from __future__ import annotations

import numpy as np
import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import distributed as dist
from tracegrad.nn.parallel import DistributedDataParallel
from tracegrad.passes.buckets import buckets
from tracegrad.tensor import call


@pytest.fixture
def group(monkeypatch):
    for name in dist._LAUNCHER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    dist.init_process_group()
    yield
    dist.destroy_process_group()


def mlp():
    tg.manual_seed(0)
    return tg.nn.Sequential(tg.nn.Linear(4, 8), tg.nn.Tanh(), tg.nn.Linear(8, 3)).double()


def adam_step(model, opt, backwards=1):
    def train_step(x, y):
        opt.zero_grad()
        for _ in range(backwards):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
        opt.step()
        return loss

    return train_step


X, Y = tg.randn(6, 4, dtype=tg.float64), tg.tensor([0, 1, 2, 0, 1, 2])


def trained(wrap, compiled: bool, backwards=1, steps=3, **options):
    """Parameters and gradients after ``steps`` Adam steps of ``wrap(mlp())``."""
    model = mlp()
    wrapped = wrap(model)
    opt = tg.optim.Adam(model.parameters(), lr=0.01)
    step = adam_step(wrapped, opt, backwards)
    if compiled:
        step = tg.compile(step, **options)
    for _ in range(steps):
        step(X, Y)
    state = [p.detach().numpy().copy() for p in model.parameters()]
    return state + [p.grad.numpy().copy() for p in model.parameters()], step


def small_buckets(model):
    return DistributedDataParallel(model, bucket_cap_mb=0.0002)  # 209 bytes: a few buckets


@pytest.mark.parametrize("backwards", [1, 2])
def test_a_compiled_ddp_step_trains_like_the_plain_model(group, backwards):
    """World size 1: the averages are the identity; parameters and .grad equal the plain
    model's eager step and eager DDP's (two backward() calls average twice, in two rounds)."""
    plain, _ = trained(lambda m: m, compiled=False, backwards=backwards)
    eager, _ = trained(small_buckets, compiled=False, backwards=backwards)
    compiled, step = trained(small_buckets, compiled=True, backwards=backwards)
    for a, b, c in zip(plain, eager, compiled, strict=True):
        np.testing.assert_allclose(c, a, rtol=0, atol=1e-12)
        np.testing.assert_allclose(c, b, rtol=0, atol=1e-12)
    ops = step.graph.op_counts()
    assert ops["all_reduce_start"] == ops["all_reduce_wait"] == 4 * backwards  # cap: 4 buckets
    assert "all_reduce" not in ops  # every gradient went into a bucket


def test_unoptimized_the_step_averages_each_gradient_alone(group):
    compiled, step = trained(small_buckets, compiled=True, passes=None)
    plain, _ = trained(lambda m: m, compiled=False)
    for a, b in zip(plain, compiled, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-12)
    ops = step.graph.op_counts()
    assert ops["all_reduce"] == 4 and "all_reduce_start" not in ops


def test_buckets_follow_reverse_parameter_order_under_the_cap(group):
    """Cap 209 bytes: [last bias 24 B + last weight 192 B] is over it, so each bucket holds one
    parameter, except the first layer's (bias 64 B alone, weight 256 B alone): 4 buckets in
    reverse parameter order. With the default 25 MB cap, one bucket holds every gradient."""
    _, step = trained(small_buckets, compiled=True, steps=1)
    found = buckets(step.specializations[-1].program.parts[0][1])
    assert [(b.gradients, b.nbytes) for b in found] == [(1, 24), (1, 192), (1, 64), (1, 256)]
    _, step = trained(DistributedDataParallel, compiled=True, steps=1)
    (one,) = buckets(step.specializations[-1].program.parts[0][1])
    assert (one.gradients, one.nbytes) == (4, 8 * (8 * 4 + 8 + 3 * 8 + 3))


def test_each_bucket_starts_after_its_gradients_and_is_waited_on_before_its_reader(group):
    _, step = trained(small_buckets, compiled=True, steps=1)
    graph = step.specializations[-1].program.parts[0][1]
    position = {n: i for i, n in enumerate(graph.nodes)}
    producers = graph.producers()
    for node in graph.nodes:
        if node.op == "all_reduce_start":
            # right after the last gradient it packs (or other starts)
            made = max(position[producers[v]] for v in node.inputs)
            between = graph.nodes[made + 1 : position[node]]
            assert all(n.op == "all_reduce_start" for n in between), between
        if node.op == "all_reduce_wait":
            # before everything else: just its pieces, then the update reading them
            pieces = graph.nodes[position[node] + 1 : position[node] + 3]
            assert [n.op for n in pieces] == ["getitem", "reshape"]
            reader = graph.nodes[position[node] + 3]
            assert pieces[1].outputs[0] in reader.inputs
            assert reader.phase.value == "update"
    report = step.explain()
    assert "gradient all_reduce: 4 buckets, 536 B per step" in report
    assert "waited on before" in report and "(update)" in report
    assert report.count("rt.all_reduce_start(") == 0  # the report is not the code
    assert step.code.count("rt.all_reduce_start(") == 4


def test_no_sync_in_a_compiled_step_recompiles_without_averaging(group):
    model = mlp()
    ddp = small_buckets(model)
    opt = tg.optim.SGD(model.parameters(), lr=0.1)
    step = tg.compile(adam_step(ddp, opt))
    step(X, Y)
    assert "all_reduce_start" in step.graph.op_counts()
    with ddp.no_sync():
        step(X, Y)
        assert not {"all_reduce", "all_reduce_start"} & set(step.graph.op_counts())
    step(X, Y)
    assert "all_reduce_start" in step.graph.op_counts()
    # (the first call's specialization serves the third: only no_sync compiled anew)
    assert sum("require_backward_grad_sync" in r for r in step.recompile_reasons) == 1
    assert len(step.specializations) == 2


def test_the_collective_ops_with_one_process():
    x, y = tg.randn(2, 3, dtype=tg.float64), tg.randn(4, dtype=tg.float64)
    for reduce in ("sum", "avg", "max", "min"):
        out = call("all_reduce", x, reduce=reduce, bucket_cap=1, order=0)
        assert np.array_equal(out.numpy(), x.numpy())
        assert not np.shares_memory(out.numpy(), x.numpy())
    started = call("all_reduce_start", x, y, reduce="avg", bucket=0)
    assert np.array_equal(started.numpy(), np.concatenate([x.numpy().ravel(), y.numpy()]))
    waited = call("all_reduce_wait", started, reduce="avg", bucket=0)
    assert np.array_equal(waited.numpy(), started.numpy())


def test_the_collective_ops_reject_bad_input():
    x = tg.randn(2, 3)
    with pytest.raises(ValueError, match="reduce must be one of sum, avg, max, min, got 'mean'"):
        call("all_reduce", x, reduce="mean", bucket_cap=1, order=0)
    with pytest.raises(tg.DTypeError, match=r"floating-point tensor, got tracegrad\.int64"):
        call("all_reduce", tg.tensor([1, 2]), reduce="avg", bucket_cap=1, order=0)
    with pytest.raises(tg.DTypeError, match=r"share a dtype, got tracegrad\.float32, tracegrad\."):
        call("all_reduce_start", x, tg.randn(2, dtype=tg.float64), reduce="sum", bucket=0)
    with pytest.raises(tg.ShapeError, match=r"flat bucket buffer, got shape \(2, 3\)"):
        call("all_reduce_wait", x, reduce="sum", bucket=0)


class Scaled(tg.nn.Module):
    """A Linear layer whose output is scaled per feature by a gathered table: the table's
    gradient is a scatter_add, which no product writes."""

    def __init__(self):
        super().__init__()
        self.linear = tg.nn.Linear(4, 8)
        self.table = tg.nn.Parameter(tg.ones(4))
        self.index = tg.arange(8) % 4

    def forward(self, x):
        return self.linear(x) * self.table[self.index]


@pytest.mark.parametrize("first", [lambda: tg.nn.Linear(4, 8), Scaled])
def test_gradients_are_computed_straight_into_their_bucket(group, first):
    """The memory plan gives a bucket one buffer and has each product computing a gradient
    write it into its piece there (no packing copy); a gradient no product writes (a
    scatter_add) is copied into its piece by the start. The step trains as the plain model."""

    def build():
        tg.manual_seed(0)
        return tg.nn.Sequential(first(), tg.nn.Tanh(), tg.nn.Linear(8, 3)).double()

    results = []
    for wrap in (lambda m: m, DistributedDataParallel):
        model = build()
        opt = tg.optim.SGD(model.parameters(), lr=0.1)
        step = tg.compile(adam_step(wrap(model), opt))
        for _ in range(3):
            step(X, Y)
        results.append([p.detach().numpy().copy() for p in model.parameters()])
    for got, want in zip(results[1], results[0], strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    lines = step.code.splitlines()
    start = next(line for line in lines if "rt.all_reduce_start(" in line)
    bucket = start.split("out=")[1].split(")")[0]
    into_bucket = [line for line in lines if f"out={bucket}[" in line]
    assert len(into_bucket) == 4 and all("np.matmul(" in line for line in into_bucket)
    assert start.count(", ") - 1 == len(results[0])  # every gradient in the one bucket


def test_each_grad_lives_in_its_piece_of_the_bucket_and_a_kept_one_keeps_its_values(group):
    """After a step, each parameter's .grad is its piece of the reduced bucket (no copy out);
    a .grad the caller keeps across the next step (which replaces .grad: zero_grad first)
    keeps its own step's values, as eagerly, and the next step stores into the bucket again."""
    runs = []
    for compiled in (False, True):
        model = mlp()
        opt = tg.optim.Adam(model.parameters(), lr=0.01)
        step = adam_step(DistributedDataParallel(model), opt)
        step = tg.compile(step) if compiled else step
        kept = []
        for i in range(3):
            step(X * (i + 1), Y)
            kept.append([p.grad for p in model.parameters()])
        runs.append([[g.numpy().copy() for g in grads] for grads in kept])
        if compiled:
            bucket = kept[-1][0].numpy().base
            assert bucket is not None and bucket.size == sum(p.numel() for p in model.parameters())
            assert all(g.numpy().base is bucket for g in kept[-1])  # one bucket, no copies
            assert not any(np.shares_memory(g.numpy(), bucket) for g in kept[0] + kept[1])
    for want, got in zip(*runs, strict=True):
        for a, b in zip(want, got, strict=True):
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-12)
