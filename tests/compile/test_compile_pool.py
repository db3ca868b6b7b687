"""``tg.compile(..., threads=n)``: products side by side and elementwise rows split on a
thread pool give the same bits as one thread (and eager's values), on the zoo and on W1-W4 at
reduced size; no two statements running at once touch one memory; the choice shows in the
code and in explain(); nothing is chosen where it does not pay; bad counts are refused."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import benchmarks.harness as harness
import benchmarks.workloads as W
import tracegrad as tg
from tracegrad import nn, optim
from tracegrad.blas import one_blas_thread
from tracegrad.ops.runtime import scratch
from tracegrad.passes import threads as threads_pass


def zoo_step(zoo, model_name, threads):
    setup = zoo.build(model_name, batch=16)
    opt = optim.Adam(setup.model.parameters(), lr=1e-3)

    def train_step(*inputs):
        opt.zero_grad()
        loss = setup.loss(setup.model(*inputs))
        loss.backward()
        opt.step()
        return loss

    step = train_step if threads is None else tg.compile(train_step, threads=threads)
    return step, setup


def run_steps(step, setup, n=3):
    losses = [step(*setup.inputs).item() for _ in range(n)]
    return losses, [p.detach().numpy().copy() for p in setup.model.parameters()]


def written_and_read(node, plan):
    return {plan.memory.get(v, v) for v in node.outputs}, {
        plan.memory.get(v, v) for v in node.inputs
    }


def assert_nothing_shared(report):
    """From each function's memory plan: no statement running in the pool shares memory with
    one running beside it (one writes what the other reads or writes)."""
    chosen = 0
    for name, graph in report.planned:
        emitted = report.emitted[name]
        for pool, here in threads_pass.concurrent_pairs(emitted.threads):
            a_writes, a_reads = written_and_read(graph.nodes[pool], emitted.plan)
            b_writes, b_reads = written_and_read(graph.nodes[here], emitted.plan)
            assert not a_writes & (b_reads | b_writes) and not b_writes & a_reads
        chosen += len(emitted.threads.concurrent) + len(emitted.threads.splits)
    return chosen


@pytest.mark.models()
def test_zoo_steps_on_two_threads_equal_one_thread_bit_for_bit(zoo, model_name, always_pays):
    eager_losses, eager_params = run_steps(*zoo_step(zoo, model_name, None))
    one_losses, one_params = run_steps(*zoo_step(zoo, model_name, 1))
    step, setup = zoo_step(zoo, model_name, 2)
    two_losses, two_params = run_steps(step, setup)
    assert two_losses == one_losses
    assert all(np.array_equal(a, b) for a, b in zip(two_params, one_params, strict=True))
    np.testing.assert_allclose(two_losses, eager_losses, rtol=1e-10)
    for got, want in zip(two_params, eager_params, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    chosen = assert_nothing_shared(step.latest.report)
    assert chosen > 0 or model_name == "ste"


@pytest.mark.models("mlp", "cnn", "transformer")
def test_zoo_modules_on_two_threads_equal_one_thread(zoo, model_name, always_pays):
    results = {}
    for threads in (1, 2):
        setup = zoo.build(model_name, batch=16)
        cm = tg.compile(setup.model, threads=threads)
        loss = setup.loss(cm(*setup.inputs))
        loss.backward()
        grads = [p.grad.numpy().copy() for p in setup.model.parameters()]
        results[threads] = (loss.item(), grads, cm)
    assert results[1][0] == results[2][0]
    assert all(np.array_equal(a, b) for a, b in zip(results[1][1], results[2][1], strict=True))
    assert assert_nothing_shared(results[2][2].latest.report) > 0


@pytest.mark.parametrize("name", ["W1", "W2", "W3", "W4"])
def test_workloads_at_reduced_size_on_two_threads_equal_one_thread(name, always_pays):
    setup = W.make_setup(W.get_workload(name, **harness.SMALL[name]))
    runs = {}
    for threads in (1, 2):
        impl = W.TracegradImplementation(setup, "step", threads=threads)
        losses = [impl.loss_value(impl.step(i)) for i in range(3)]
        runs[threads] = (losses, impl.parameters(), impl.compiled)
    assert runs[2][0] == runs[1][0]
    for key, value in runs[1][1].items():
        assert np.array_equal(runs[2][1][key], value), key
    assert assert_nothing_shared(runs[2][2].latest.report) > 0


def mlp_step(threads, width=512, batch=256):
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(width, width), nn.Tanh(), nn.Linear(width, width))
    opt = optim.SGD(model.parameters(), lr=0.01)
    x, y = tg.randn(batch, width), tg.randn(batch, width)

    def train_step(x, y):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        return loss

    return tg.compile(train_step, threads=threads), (x, y)


def test_the_choice_shows_in_the_code_and_in_explain(always_pays):
    step, args = mlp_step(2)
    step(*args)
    code, text = step.code, step.explain()
    assert "POOL = thread_pool(1)" in code and "POOL.submit(" in code
    assert ".result()" in code and "with one_blas_thread():  # matmul" in code
    assert "split in 2 parts" in code
    assert "threads (2):" in text and "in the pool beside" in text
    one, args = mlp_step(1)
    one(*args)
    assert "POOL" not in one.code and "threads (" not in one.explain()


def test_split_row_loops_give_the_pool_piece_buffers_of_its_own(always_pays):
    """W1's SGD update of its 128 x 784 weight runs in row pieces through a buffer of one
    piece: the pool's part of the rows has a buffer of its own."""
    setup = W.make_setup(W.get_workload("W1"))
    impl = W.TracegradImplementation(setup, "step", threads=2)
    impl.step(0)
    code = impl.compiled.code
    assert "def step_rows" in code and "_pool0 = np.empty(" in code


def test_nothing_runs_on_the_pool_where_it_does_not_pay():
    """Under the real cost model a small step's code on two threads is its code on one."""
    codes = []
    for threads in (1, 2):
        step, args = mlp_step(threads, width=16, batch=8)
        step(*args)
        codes.append(step.code)
    assert codes[0] == codes[1]


def test_products_stay_on_blas_threads_while_blas_runs_more_than_one(restore_blas_threads):
    """With BLAS on two threads no product goes to the pool: BLAS spreads it over the cores
    already (measured, W2 and W4 at two threads ran 20-45% slower with products paired), and
    OpenBLAS rounds a product on one thread otherwise than on two. With BLAS on one thread,
    two large independent products run side by side."""
    plans = {}
    for blas in (2, 1):
        tg.set_num_threads(blas)
        step, args = mlp_step(2, width=1024, batch=512)
        step(*args)
        plans[blas] = step.latest.report.emitted["step"].threads
    assert not plans[2].concurrent and plans[1].concurrent
    assert any("matmul" in c.reason for c in plans[1].concurrent)


def test_one_blas_thread_inside_and_the_limit_back_after(restore_blas_threads):
    tg.set_num_threads(2)
    with one_blas_thread():
        assert blas_counts() == {1}
    assert blas_counts() == {2}
    with pytest.raises(RuntimeError), one_blas_thread():
        raise RuntimeError("a failing statement")
    assert blas_counts() == {2}


def blas_counts() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


@pytest.mark.parametrize(
    ("threads", "error", "message"),
    [
        (0, ValueError, "threads must be at least 1, got 0"),
        (-2, ValueError, "at least 1"),
        (2.0, TypeError, "threads must be a number of threads \\(int\\), got 2.0"),
        (True, TypeError, "got True"),
        ("2", TypeError, "got '2'"),
    ],
)
def test_bad_thread_counts_are_refused(threads, error, message):
    with pytest.raises(error, match=message):
        tg.compile(nn.Linear(2, 2), threads=threads)


def test_a_numpy_integer_count_is_accepted():
    cm = tg.compile(nn.Linear(3, 2), threads=np.int64(2))
    assert cm.threads == 2 and type(cm.threads) is int


def test_kernels_scratch_arrays_are_each_threads_own():
    """A kernel's work array is kept per thread: the pool's half of a split GELU does not
    write into the calling thread's half's temporaries."""
    like = np.empty((4, 3))
    here = scratch(like, "test-slot")
    with ThreadPoolExecutor(1) as pool:
        there = pool.submit(scratch, like, "test-slot").result()
    assert there is not here and scratch(like, "test-slot") is here


def test_a_split_gelu_equals_the_unsplit_one(always_pays):
    """Two halves of one shape run the same scratch-using kernel at once."""
    results = []
    for threads in (1, 2):
        tg.manual_seed(0)
        model = nn.Sequential(nn.Linear(256, 256), nn.GELU(approximate="tanh"))
        cm = tg.compile(model, threads=threads)
        x = tg.randn(512, 256)
        out = cm(x)
        out.sum().backward()
        results.append((out.detach().numpy().copy(), model[0].weight.grad.numpy().copy(), cm.code))
    assert "split in 2 parts" in results[1][2]
    assert np.array_equal(results[0][0], results[1][0])
    assert np.array_equal(results[0][1], results[1][1])


def test_functions_called_with_containers_keep_their_compile_options():
    """A function called with a dict or list compiles one specialization per structure,
    with the options it was compiled with: its threads, and its memory budget (which one
    byte fails)."""
    w = tg.randn(64, 64, requires_grad=True)

    def f(x, pack):
        return (x @ w + pack["b"][0]).tanh().sum()

    args = (tg.randn(32, 64), {"b": [tg.randn(64)]})
    threaded = tg.compile(f, threads=2)
    threaded(*args)
    assert {e.threads.threads for e in threaded.latest.report.emitted.values()} == {2}
    with pytest.raises(tg.MemoryBudgetError):
        tg.compile(f, memory_budget=1)(*args)


def splits_chosen(fn, *args):
    """What the real cost model splits in ``fn`` compiled with threads=2, and its result
    beside the result compiled with threads=1."""
    compiled = {threads: tg.compile(fn, threads=threads) for threads in (1, 2)}
    results = {threads: c(*args).numpy() for threads, c in compiled.items()}
    assert np.array_equal(results[1], results[2])
    return [s.reason for s in compiled[2].latest.report.emitted["forward"].threads.splits]


def test_the_cost_model_splits_arithmetic_not_bytes_nor_short_calls():
    """A fused chain of transcendental functions is bound by arithmetic: its two halves at
    once take about half as long. An update streaming two arrays is bound by the bytes it
    moves, which both cores share; GELU's kernel over W2's (256, 2048) activations runs in
    cache-sized pieces whose NumPy calls would wait for the GIL more than the halves gain."""
    x, y = tg.randn(1024, 1024), tg.randn(1024, 1024)
    (chain,) = splits_chosen(lambda x: x.exp().sin().cos().tanh().sum(1), x)
    assert "fused" in chain and "split in 2 parts of its 1024 rows" in chain
    assert not splits_chosen(lambda x, y: (x * 0.9 + y * 0.1).sum(1), x, y)
    gelu = nn.GELU(approximate="tanh")
    assert not splits_chosen(lambda x: gelu(x).sum(1), tg.randn(256, 2048))
