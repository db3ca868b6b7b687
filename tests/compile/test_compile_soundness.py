"""A compiled call computes what the eager call computes: values, gradients, mutated state and
random draws. Each test is a program that compiled code once got silently wrong."""

from __future__ import annotations

import numpy as np
import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn


def _calls(fn, make_args, n=3):
    """Results of ``n`` calls, as arrays, each on fresh arguments from ``make_args``."""
    return [np.asarray(fn(*make_args()).detach().numpy()).copy() for _ in range(n)]


def _linear_sgd_by_data(update):
    """A Linear trained by writing its parameters through ``.data`` (``update(p)``)."""
    tg.manual_seed(0)
    fc = nn.Linear(3, 1)
    x, y = tg.randn(4, 3), tg.randn(4, 1)

    def step(x, y):
        fc.zero_grad()
        loss = ((fc(x) - y) ** 2).mean()
        loss.backward()
        for p in fc.parameters():
            update(p)
        return loss

    return fc, step, (x, y)


@pytest.mark.parametrize(
    "update",
    [
        lambda p: p.data.add_(-0.1 * p.grad),
        lambda p: p.data.copy_(p.data - 0.1 * p.grad),
        lambda p: p.data.sub_(p.grad, alpha=0.1),
    ],
    ids=["data_add_", "data_copy_", "data_sub_alpha"],
)
def test_updates_through_data_reach_the_parameters(update):
    fc_e, eager, args = _linear_sgd_by_data(update)
    losses_e = [float(eager(*args)) for _ in range(3)]
    fc_c, step, args = _linear_sgd_by_data(update)
    compiled = tg.compile(step)
    losses_c = [float(compiled(*args)) for _ in range(3)]
    assert losses_c == pytest.approx(losses_e, rel=1e-6)
    assert losses_c[0] != losses_c[2]  # the parameters moved
    np.testing.assert_allclose(fc_c.weight.detach().numpy(), fc_e.weight.detach().numpy(), 1e-6)


def test_data_assignment_of_the_same_shape_is_an_update():
    def update(p):
        p.data = p.data - 0.1 * p.grad

    _, eager, args = _linear_sgd_by_data(update)
    losses_e = [float(eager(*args)) for _ in range(3)]
    _, step, args = _linear_sgd_by_data(update)
    compiled = tg.compile(step)
    assert [float(compiled(*args)) for _ in range(3)] == pytest.approx(losses_e, rel=1e-6)


def test_data_assignment_of_another_shape_is_refused_at_the_users_line():
    p = nn.Parameter(tg.ones(3))

    def f(x):
        p.data = tg.zeros(4)
        return x * 2

    with pytest.raises(tg.TraceError, match=r"test_compile_soundness\.py"):
        tg.compile(f)(tg.ones(2))


@pytest.mark.parametrize("write", ["fill_", "mul_", "setitem", "view"])
def test_a_write_to_a_local_does_not_reach_earlier_readers(write):
    def f(x):
        label = tg.full((3,), 1.0)
        before = (x - label).sum()
        if write == "fill_":
            label.fill_(0.0)
        elif write == "mul_":
            label.mul_(5)
        elif write == "setitem":
            label[1] = 7.0
        else:
            label[:2].add_(x[:2])
        return before + (x * label).sum()

    x = tg.tensor([1.0, 2.0, 3.0])
    expected = f(x).item()
    assert tg.compile(f)(x).item() == pytest.approx(expected)
    assert tg.compile(f, passes=None)(x).item() == pytest.approx(expected)


def test_a_reused_label_tensor_in_a_training_step_gives_the_eager_gradients():
    """A GAN discriminator step filling one label tensor with 1, then 0."""

    def run(compiled):
        tg.manual_seed(3)
        disc = nn.Sequential(nn.Linear(4, 1), nn.Sigmoid())
        real, fake = tg.randn(5, 4), tg.randn(5, 4)

        def step(real, fake):
            disc.zero_grad()
            label = tg.full((5, 1), 1.0)
            loss_real = ((disc(real) - label) ** 2).mean()
            label.fill_(0.0)
            loss_fake = ((disc(fake) - label) ** 2).mean()
            (loss_real + loss_fake).backward()
            return loss_real

        fn = tg.compile(step) if compiled else step
        losses = [fn(real, fake).item() for _ in range(2)]
        return losses, disc[0].weight.grad.numpy().copy()

    losses_e, grad_e = run(False)
    losses_c, grad_c = run(True)
    assert losses_c == pytest.approx(losses_e, rel=1e-6)
    np.testing.assert_allclose(grad_c, grad_e, rtol=1e-5, atol=1e-7)


def test_random_draws_are_drawn_anew_on_every_call_as_eagerly():
    tg.manual_seed(0)
    lin = nn.Linear(3, 2)

    def f(x):
        return lin(x) + tg.randn_like(x[:, :2]) + tg.rand(2) * tg.randint(0, 4, (1,))

    x = tg.randn(2, 3)
    compiled = tg.compile(f)
    tg.manual_seed(7)
    eager = [f(x).detach().numpy().copy() for _ in range(3)]
    tg.manual_seed(7)
    got = [compiled(x).detach().numpy().copy() for _ in range(3)]
    assert not np.array_equal(got[0], got[1])
    for a, b in zip(got, eager, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_vae_reparameterization_step_matches_eager_draws_and_updates():
    def run(compiled):
        tg.manual_seed(1)
        enc, dec = nn.Linear(6, 4), nn.Linear(2, 6)
        opt = tg.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-2)
        x = tg.randn(3, 6)

        def step(x):
            opt.zero_grad()
            mu, logvar = enc(x).chunk(2, dim=1)
            z = mu + tg.randn_like(mu) * (0.5 * logvar).exp()
            loss = ((dec(z) - x) ** 2).sum() - 0.5 * (1 + logvar - mu**2 - logvar.exp()).sum()
            loss.backward()
            opt.step()
            return loss

        fn = tg.compile(step) if compiled else step
        tg.manual_seed(11)
        return [fn(x).item() for _ in range(4)], dec.weight.detach().numpy().copy()

    losses_e, w_e = run(False)
    losses_c, w_c = run(True)
    assert losses_c == pytest.approx(losses_e, rel=1e-5)
    np.testing.assert_allclose(w_c, w_e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "write",
    [
        lambda x: x[0].add_(1.0),
        lambda x: x.reshape(4).mul_(3.0),
        lambda x: x.t().mul_(2.0),
        lambda x: x.t()[0].sub_(1.0),
        lambda x: x[:, 1].fill_(5.0),
        lambda x: x.__setitem__((1, 0), 9.0),
        lambda x: x.__setitem__(tg.tensor([1, 0, 1]), tg.tensor([2.0, 3.0])),
        lambda x: x.data[1].zero_(),
        lambda x: x.detach()[0, 1].add_(4.0),
    ],
    ids=[
        "row",
        "reshape",
        "transpose",
        "row_of_transpose",
        "column",
        "item",
        "rows",
        "data",
        "detach",
    ],
)
def test_writes_through_views_of_an_argument_reach_it_and_later_reads(write):
    def f(x):
        with tg.no_grad():
            write(x)
        return x * 2

    x_e, x_c = tg.ones(2, 2), tg.ones(2, 2)
    out_e = f(x_e)
    out_c = tg.compile(f)(x_c)
    np.testing.assert_array_equal(out_c.numpy(), out_e.numpy())
    np.testing.assert_array_equal(x_c.numpy(), x_e.numpy())


def test_a_view_taken_before_a_write_sees_it():
    def f(x):
        row = x[0]
        x.mul_(3.0)
        return row + 1

    x_e, x_c = tg.tensor([[1.0, 2.0], [3.0, 4.0]]), tg.tensor([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(tg.compile(f)(x_c).numpy(), f(x_e).numpy())
    np.testing.assert_array_equal(x_c.numpy(), x_e.numpy())


def test_a_write_to_a_reshape_copy_stays_in_the_copy():
    def f(x):
        flat = x.t().reshape(4)  # NumPy cannot view a transpose flat: a copy
        flat.add_(10.0)
        return flat + x.reshape(4)

    x_e, x_c = tg.tensor([[1.0, 2.0], [3.0, 4.0]]), tg.tensor([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_array_equal(tg.compile(f)(x_c).numpy(), f(x_e).numpy())
    np.testing.assert_array_equal(x_c.numpy(), x_e.numpy())


class _RunningStats(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.register_buffer("stats", tg.zeros(2, 3))

    def forward(self, x):
        y = self.lin(x)
        with tg.no_grad():
            self.stats[0].mul_(0.5).add_(y.mean(0) * 0.5)
            self.stats[1, :2] = y[0, :2]
        return y * 2


def test_buffer_rows_updated_as_moving_averages():
    tg.manual_seed(0)
    eager, compiled = _RunningStats(), _RunningStats()
    compiled.load_state_dict(eager.state_dict())
    cm = tg.compile(compiled)
    for _ in range(3):
        x = tg.randn(4, 3)
        eager(x).sum().backward()
        cm(x).sum().backward()
    np.testing.assert_allclose(compiled.stats.numpy(), eager.stats.numpy(), rtol=1e-6)
    assert np.abs(compiled.stats.numpy()).sum() > 0
    np.testing.assert_allclose(
        compiled.lin.weight.grad.numpy(), eager.lin.weight.grad.numpy(), rtol=1e-6
    )


def test_an_embedding_row_zeroed_after_the_update_in_a_step():
    def run(compiled):
        tg.manual_seed(2)
        emb = nn.Embedding(5, 3)
        opt = tg.optim.SGD(emb.parameters(), lr=0.5)
        idx = tg.tensor([1, 0, 3])

        def step(idx):
            opt.zero_grad()
            loss = (emb(idx) ** 2).sum()
            loss.backward()
            opt.step()
            with tg.no_grad():
                emb.weight[0].zero_()
            return loss

        fn = tg.compile(step) if compiled else step
        return [fn(idx).item() for _ in range(3)], emb.weight.detach().numpy().copy()

    losses_e, w_e = run(False)
    losses_c, w_c = run(True)
    assert losses_c == pytest.approx(losses_e, rel=1e-6)
    np.testing.assert_allclose(w_c, w_e, rtol=1e-6)
    assert not w_c[0].any()


def test_an_in_place_write_through_a_broadcast_view_is_refused_as_eagerly():
    def f(x):
        with tg.no_grad():
            x.expand(3, 2)[0].add_(1.0)
        return x

    with pytest.raises(RuntimeError, match="shares memory between elements"):
        f(tg.ones(1, 2))
    with pytest.raises(RuntimeError, match="shares memory between elements"):
        tg.compile(f)(tg.ones(1, 2))


def test_writing_through_an_index_the_program_computes():
    def f(x):
        out = tg.zeros(3)
        out[x.argmax()] = 1.0  # the index is known only when the program runs
        out[tg.tensor([0])] += x[0]
        return out

    compiled = tg.compile(f)
    for x in ([0.0, 5.0, 1.0], [3.0, 1.0, 2.0]):
        assert compiled(tg.tensor(x)).tolist() == f(tg.tensor(x)).tolist()


def test_cross_entropy_on_a_copy_is_unaffected_by_later_writes():
    def f(logits, target):
        loss = F.cross_entropy(logits, target)
        with tg.no_grad():
            logits.mul_(0.0)
        return loss

    logits = tg.tensor([[1.0, 2.0, 0.5], [0.1, 0.2, 3.0]])
    target = tg.tensor([1, 2])
    expected = f(logits.clone(), target).item()
    got = tg.compile(f)(logits.clone(), target).item()
    assert got == pytest.approx(expected)


# --- containers, NumPy arrays, keyword arguments -------------------------------------------------


def test_numpy_arguments_are_read_fresh_on_every_call():
    vg = tg.value_and_grad(lambda x, w: np.sum(x * w))
    x, w = np.ones(3), np.arange(3.0)
    value, grad = vg(x, w)
    kept = grad.numpy().copy()
    w[0] = 5.0
    value2, grad2 = vg(x, w)
    assert value.item() == 3.0 and value2.item() == 8.0
    np.testing.assert_array_equal(grad2.numpy(), [5.0, 1.0, 2.0])
    np.testing.assert_array_equal(grad.numpy(), kept)  # what a call returned is its own
    other = tg.grad(lambda x, w: np.sum(x * w))
    np.testing.assert_array_equal(other(np.ones(4), np.arange(4.0)).numpy(), np.arange(4.0))
    np.testing.assert_array_equal(other(np.ones(4), np.arange(4.0) + 1).numpy(), np.arange(4.0) + 1)


def test_a_zero_d_numpy_argument_mutated_between_calls():
    scale = np.array(2.0)
    f = tg.compile(lambda x, s: x * s)
    assert f(tg.ones(2), scale).tolist() == [2.0, 2.0]
    scale[...] = 3.0
    assert f(tg.ones(2), scale).tolist() == [3.0, 3.0]


def test_a_compiled_module_takes_a_numpy_array_like_the_eager_one():
    tg.manual_seed(0)
    model = nn.Linear(3, 2)
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    np.testing.assert_allclose(tg.compile(model)(x).detach().numpy(), model(x).detach().numpy())


def test_nested_containers_and_keywords_in_and_out():
    def f(batch, state, *, scale=1.0):
        h, c = state
        out = (batch["x"] @ h) * scale + c
        return {"out": out, "state": (h * 2, [c.sum(), batch["y"][0]])}

    x, h, c = tg.randn(2, 3), tg.randn(3, 3), tg.randn(3)
    batch = {"x": x, "y": (tg.ones(2),)}
    compiled = tg.compile(f)
    for scale in (1.0, 2.0, 2.0):
        got, want = compiled(batch, (h, c), scale=scale), f(batch, (h, c), scale=scale)
        assert got.keys() == want.keys() and isinstance(got["state"][1], list)
        np.testing.assert_allclose(got["out"].numpy(), want["out"].numpy(), rtol=1e-6)
        np.testing.assert_allclose(got["state"][1][0].numpy(), want["state"][1][0].numpy())
    batch2 = {"x": tg.randn(2, 3), "y": (tg.ones(2),)}  # a new dict of new tensors
    np.testing.assert_allclose(
        compiled(batch2, (h, c))["out"].numpy(), f(batch2, (h, c))["out"].numpy(), rtol=1e-6
    )


def test_a_batch_passed_as_a_list_to_a_training_step():
    def run(compiled):
        tg.manual_seed(4)
        model = nn.Linear(3, 1)
        opt = tg.optim.SGD(model.parameters(), lr=0.1)

        def step(batch):
            x, y = batch
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
            return loss

        fn = tg.compile(step) if compiled else step
        data = [[tg.randn(4, 3), tg.randn(4, 1)] for _ in range(3)]
        return [fn(b).item() for b in data]

    assert run(True) == pytest.approx(run(False), rel=1e-6)


# --- compiled functions compose with eager code ------------------------------------------------


def test_a_compiled_function_carries_gradients_back():
    x = tg.randn(3, requires_grad=True)
    y = tg.compile(lambda v: (v * v).sum())(x)
    assert y.requires_grad and y.grad_fn is not None
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.detach().numpy(), rtol=1e-6)


def test_compiled_plus_eager_gives_the_gradients_of_both_parts():
    tg.manual_seed(0)
    lin = nn.Linear(3, 2)
    x = tg.randn(4, 3, requires_grad=True)

    def part(v):
        return lin(v).tanh().sum()

    (part(x) + (x**2).sum()).backward()
    want_x, want_w = x.grad.numpy().copy(), lin.weight.grad.numpy().copy()
    x.grad, lin.weight.grad = None, None
    (tg.compile(part)(x) + (x**2).sum()).backward()
    np.testing.assert_allclose(x.grad.numpy(), want_x, rtol=1e-5)
    np.testing.assert_allclose(lin.weight.grad.numpy(), want_w, rtol=1e-5)


def test_a_compiled_function_backpropagates_into_the_history_it_reads():
    w = tg.randn(3, requires_grad=True)
    saved = [w * 2, w.exp()]  # tensors with autograd history, read from a closure
    f = tg.compile(lambda: tg.stack(saved).sum())
    f().backward()
    np.testing.assert_allclose(w.grad.numpy(), 2 + w.detach().exp().numpy(), rtol=1e-6)


# --- function transforms --------------------------------------------------------------------


def test_grad_of_an_unused_argument_or_a_constant_is_zero():
    both = tg.grad(lambda x, y: (x * 2).sum(), argnums=(0, 1))(tg.ones(2), tg.ones(3))
    assert both[0].tolist() == [2.0, 2.0] and both[1].tolist() == [0.0, 0.0, 0.0]
    assert tg.grad(lambda x: tg.tensor(3.0))(tg.ones(2)).tolist() == [0.0, 0.0]


def test_grad_of_containers_with_aux():
    def f(params):
        w, extra = params
        return (w * extra["b"]).sum(), "aux"

    grads, aux = tg.grad(f, has_aux=True)([tg.ones(2), {"b": tg.tensor([3.0, 4.0])}])
    assert aux == "aux"
    assert grads[0].tolist() == [3.0, 4.0] and grads[1]["b"].tolist() == [1.0, 1.0]
    (value, aux), g = tg.value_and_grad(f, has_aux=True)([tg.ones(2), {"b": tg.ones(2)}])
    assert value.item() == 2.0 and aux == "aux" and g[1]["b"].tolist() == [1.0, 1.0]


def test_nested_transforms_closing_over_an_outer_traced_value():
    def outer(x):
        return x * tg.grad(lambda y: x * y)(tg.tensor(2.0))

    assert tg.grad(outer)(tg.tensor(1.0)).item() == 2.0  # d/dx x * x
    assert tg.grad(outer)(tg.tensor(3.0)).item() == 6.0


# --- values Python reads while tracing -------------------------------------------------------


class _Flagged(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("flag", tg.tensor(0.0))
        self.scale = 2.0
        self.drop = nn.Dropout(0.0)

    def forward(self, x):
        y = x * self.scale
        if self.flag:  # Python control flow on a buffer's value
            y = y + 100.0
        return self.drop(y) * (float(self.flag) + 1)


def test_python_reads_of_a_buffer_and_plain_attributes_are_guarded():
    model = _Flagged()
    cm = tg.compile(model)
    x = tg.ones(2)
    assert cm(x).tolist() == model(x).tolist() == [2.0, 2.0]
    model.flag.fill_(1.0)
    assert cm(x).tolist() == model(x).tolist() == [204.0, 204.0]
    model.scale = 3.0
    assert cm(x).tolist() == model(x).tolist() == [206.0, 206.0]
    model.drop.p = 1.0  # dropout drops everything in train mode
    assert cm(x).tolist() == model(x).tolist() == [0.0, 0.0]
    assert any("changed" in r or "attribute" in r for r in cm.recompile_reasons)


def test_a_python_read_in_a_compiled_function_is_guarded():
    threshold = tg.tensor(1.0)

    def f(x):
        return x * 2 if float(threshold) > 0 else x * 3

    compiled = tg.compile(f)
    assert compiled(tg.ones(1)).item() == 2.0
    threshold.fill_(-1.0)
    assert compiled(tg.ones(1)).item() == 3.0
    assert "tensor Python read" in compiled.recompile_reasons[-1]


def test_repr_of_a_traced_tensor():
    seen = []

    def f(x):
        seen.append(repr(x[0]))
        return x * 2

    tg.compile(f)(tg.ones(3))
    assert seen[-1] == "tensor(<traced f32[]>)"


def test_std_of_constant_values_has_a_zero_gradient_eagerly_and_compiled():
    def grad_of_std(compiled):
        x = tg.tensor([2.0, 2.0, 2.0], dtype=tg.float64, requires_grad=True)
        f = (lambda v: v.std()) if not compiled else tg.compile(lambda v: v.std())
        f(x).backward()
        return x.grad.tolist()

    assert grad_of_std(False) == grad_of_std(True) == [0.0, 0.0, 0.0]
    assert np.isnan(tg.tensor([1.0]).var().item())  # no degrees of freedom left


# --- captured tensors ----------------------------------------------------------------------------


def test_a_list_of_losses_the_caller_refills_is_read_anew():
    """Reinforcement-learning code keeps per-episode log-probabilities in a list."""
    tg.manual_seed(0)
    policy = nn.Linear(2, 3)
    saved: list = []

    def episode_loss():
        return -tg.stack(saved).sum()

    compiled = tg.compile(episode_loss)
    for n in (3, 3, 4):
        saved.clear()
        for _ in range(n):
            saved.append(policy(tg.randn(2)).log_softmax(0)[1])
        want = episode_loss()
        got = compiled()
        assert got.item() == pytest.approx(want.item(), rel=1e-6)
        policy.zero_grad()
        got.backward(retain_graph=True)  # (the eager loss below goes through the same history)
        compiled_grad = policy.weight.grad.numpy().copy()
        policy.zero_grad()
        episode_loss().backward()
        np.testing.assert_allclose(compiled_grad, policy.weight.grad.numpy(), rtol=1e-5)


def test_a_global_tensor_bound_again_is_read_anew():
    global _SCALE
    _SCALE = tg.tensor([2.0])
    compiled = tg.compile(_scaled)
    assert compiled(tg.ones(1)).item() == 2.0
    _SCALE = tg.tensor([5.0])
    assert compiled(tg.ones(1)).item() == 5.0
    assert "_SCALE" in compiled.recompile_reasons[-1]


_SCALE = None


def _scaled(x):
    return x * _SCALE


def test_a_step_backpropagating_into_history_from_outside_is_refused():
    w = tg.randn(3, requires_grad=True)
    outside = [w * 2]

    def step():
        loss = outside[0].sum()
        loss.backward()
        return loss

    with pytest.raises(tg.TraceError, match="outside"):
        tg.compile(step)()


class _Masked(nn.Module):
    def forward(self, x):
        return x * _MASK


_MASK = None


def test_a_compiled_module_reads_a_rebound_global_tensor():
    global _MASK
    _MASK = tg.tensor([1.0, 0.0])
    cm = tg.compile(_Masked())
    assert cm(tg.ones(2)).tolist() == [1.0, 0.0]
    _MASK = tg.tensor([0.0, 3.0])
    assert cm(tg.ones(2)).tolist() == [0.0, 3.0]


def test_a_product_of_an_input_with_its_own_gram_matrix():
    """x @ (x.T @ x): the forward's x.T @ x and the gradient's x.T @ g share x.T, but one
    product cannot serve both (the forward would read the backward's input)."""

    class Gram(nn.Module):
        def forward(self, x):
            return x @ (x.T @ x)

    x = tg.randn(3, 3, dtype=tg.float64, requires_grad=True)
    Gram()(x).sum().backward()
    want = x.grad.numpy().copy()
    x.grad = None
    tg.compile(Gram())(x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), want, rtol=1e-12)


# --- errors in compiled code name the user's line ------------------------------------------------


def test_an_index_out_of_range_in_compiled_code_names_the_users_line():
    def pick(x, i):
        return x[i] * 2  # the line the error names

    compiled = tg.compile(pick)
    compiled(tg.ones(3), tg.tensor([0]))
    with pytest.raises(IndexError, match=r"test_compile_soundness\.py:\d+") as info:
        compiled(tg.ones(3), tg.tensor([7]))
    assert "out of bounds" in str(info.value)


def test_an_embedding_index_out_of_range_in_a_compiled_module():
    emb = nn.Embedding(5, 3)
    cm = tg.compile(emb)
    cm(tg.tensor([1, 2]))
    with pytest.raises(IndexError, match="out of range"):
        cm(tg.tensor([1, 7]))


def test_a_compiled_submodule_assigned_into_its_parent():
    def run(compile_encoder):
        tg.manual_seed(0)
        net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
        if compile_encoder:
            net[0] = tg.compile(net[0])
        opt = tg.optim.SGD(net.parameters(), lr=0.1)
        x = tg.randn(5, 3)

        def step(x):
            opt.zero_grad()
            loss = net(x).sum()
            loss.backward()
            opt.step()
            return loss

        eager = [step(x).item() for _ in range(2)]
        compiled = tg.compile(step)
        return eager + [compiled(x).item() for _ in range(2)], list(net.state_dict())

    plain, keys = run(False)
    wrapped, wrapped_keys = run(True)
    assert wrapped == pytest.approx(plain, rel=1e-6) and wrapped_keys == keys


def test_recompile_reasons_say_in_words_what_changed():
    model = nn.Linear(3, 2)
    cm = tg.compile(model)
    cm(tg.randn(4, 3))
    model.weight = nn.Parameter(tg.randn(2, 3))
    cm(tg.randn(4, 3))
    model.eval()
    cm(tg.randn(5, 3))
    first, second = cm.recompile_reasons
    assert first == "weight: replaced by another tensor"
    assert second == "input 0: shape (4, 3) -> (5, 3); training: train mode -> eval mode"
    assert "0x" not in first + second


def test_a_step_accumulates_into_an_arguments_grad_as_eagerly():
    def step(x, w):
        loss = ((x @ w) ** 2).sum()
        loss.backward()
        return loss

    def run(fn):
        tg.manual_seed(0)
        x = tg.randn(3, 4, dtype=tg.float64, requires_grad=True)
        w = tg.randn(4, 2, dtype=tg.float64)
        grads = []
        for _ in range(3):
            fn(x, w)
            grads.append(x.grad.numpy().copy())
        return grads

    eager, compiled = run(step), run(tg.compile(step))
    for e, c in zip(eager, compiled, strict=True):
        np.testing.assert_allclose(c, e, rtol=1e-12)
    np.testing.assert_allclose(compiled[2], 3 * compiled[0], rtol=1e-12)


def test_an_unused_draw_in_a_compiled_module_still_advances_the_stream():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            F.dropout(x, 0.5)  # drawn, not used
            return self.lin(x) + tg.randn(3)

    def run(compiled):
        tg.manual_seed(0)
        model = Unused()
        fn = tg.compile(model) if compiled else model
        x = tg.randn(2, 3, requires_grad=True)
        tg.manual_seed(9)
        return [fn(x).detach().numpy().copy() for _ in range(2)]

    for got, want in zip(run(True), run(False), strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("compile_as", ["function", "step"])
def test_a_returned_view_of_an_argument_shows_later_writes_as_eagerly(compile_as):
    def f(x, w):
        with tg.no_grad():
            x.mul_(2.0)
        if compile_as == "step":
            (w * 3).sum().backward()
        return x.t(), x[0], x * 1.0

    def run(fn):
        x, w = tg.tensor([[1.0, 2.0], [3.0, 4.0]]), tg.ones(2, requires_grad=True)
        out = fn(x, w)
        with tg.no_grad():
            x.add_(100.0)  # the caller writes the argument afterwards
        return [o.numpy().copy() for o in out]

    for got, want in zip(run(tg.compile(f)), run(f), strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_local_overwritten_with_an_argument_is_its_own_memory():
    def f(x, y):
        t = x * 1.0
        t.copy_(y)  # t holds y's values in memory of its own
        return t, tg.tensor(y)  # (tg.tensor of a tensor copies too)

    x, y = tg.ones(2), tg.full((2,), 3.0)
    results = tg.compile(f)(x, y)
    with tg.no_grad():
        y.add_(5.0)
    assert [r.tolist() for r in results] == [[3.0, 3.0], [3.0, 3.0]]


def test_a_parameter_written_through_data_in_a_forward_keeps_its_gradient():
    """Eagerly the parameter stays the leaf its .grad belongs to; the compiled module and a
    compiled function must send the gradient of the new value to it too."""

    def run(compile_as):
        tg.manual_seed(5)
        lin = nn.Linear(3, 2)
        x = tg.randn(4, 3, requires_grad=True)

        def forward(x):
            lin.weight.data.mul_(0.5)
            with tg.no_grad():
                lin.bias[0] = 1.0
            return lin(x).tanh().sum()

        fn = {"eager": forward, "function": tg.compile(forward)}[compile_as]
        fn(x).backward()
        return [
            t.detach().numpy().copy() for t in (lin.weight.grad, lin.bias.grad, x.grad, lin.weight)
        ]

    want = run("eager")
    for got, expected in zip(run("function"), want, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_an_argument_updated_in_a_forward_is_saved_as_it_was_for_backward():
    def fn(x0, x1):
        x1.copy_(x1 * x1)  # written back after the forward; the backward reads the new value
        return tg.mm(x1.t(), x0)

    def run(compiled):
        tg.manual_seed(84)
        x0 = tg.randn(2, 4, dtype=tg.float64).requires_grad_()
        x1 = tg.randn(2, 4, dtype=tg.float64)
        f = fn if compiled is False else tg.compile(fn, passes=compiled)
        f(x0, x1).sum().backward()
        return x0.grad.numpy().copy(), x1.numpy().copy()

    want = run(False)
    for passes in ("default", None):
        got = run(passes)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
        np.testing.assert_array_equal(got[1], want[1])


def test_a_reshape_of_a_result_computed_from_a_transpose_is_a_view_alike():
    """Eager results are row-major, so a reshape of one views it in both runs."""

    def f(w):
        t = w.t() * 1.0
        t.reshape(-1).mul_(0.5)
        return t

    w = tg.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    np.testing.assert_array_equal(tg.compile(f)(w).numpy(), f(w).numpy())
    assert f(w).numpy()[0, 0] == 0.5


def test_data_writes_between_a_compiled_forward_and_its_backward_show_as_eagerly():
    """Eager autograd reads a tensor it saved as it is at backward time; so does the compiled
    backward for the tensors its forward wrote (and views of them)."""

    def run(compiled):
        tg.manual_seed(40156)
        w0 = nn.Parameter(tg.randn(3, 3, dtype=tg.float64))
        lin = nn.Linear(3, 3).double()
        x0 = tg.randn(3, 3, dtype=tg.float64).requires_grad_()

        def piece(x0):
            w0.data.add_(0.125)
            return ((x0 * w0) / (w0.square() + 1)).sum() + lin(w0[1:]).sum()

        first = tg.compile(piece) if compiled else piece
        (first(x0) + piece(x0)).backward()  # the eager piece writes w0 again
        return [t.numpy().copy() for t in (w0.grad, x0.grad, lin.weight.grad)]

    for got, want in zip(run(True), run(False), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12)
