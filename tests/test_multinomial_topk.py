"""``tg.multinomial`` / ``Tensor.multinomial`` (frequencies against the exact distribution and
PyTorch's, draws equal eagerly and compiled) and ``topk(sorted=False)`` (PyTorch's set of
elements, in the input's order), eagerly, compiled as a module and in a compiled step."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import tracegrad as tg
from tracegrad import nn
from tracegrad.autograd import gradcheck

RNG = np.random.default_rng(21)
WEIGHTS = np.array([[0.5, 0.0, 3.0, 1.5], [1.0, 1.0, 1.0, 1.0]])  # rows not normalized


def _frequencies(draws: np.ndarray, categories: int) -> np.ndarray:
    """How often each category is drawn, per row (over the last axis of ``draws``)."""
    return np.stack([np.bincount(row, minlength=categories) / row.size for row in draws])


def _second_draw_probabilities(w: np.ndarray) -> np.ndarray:
    """P(the second draw without replacement is j) = sum over i != j of p_i p_j / (1 - p_i)."""
    p = w / w.sum()
    return np.array(
        [sum(p[i] * p[j] / (1 - p[i]) for i in range(len(p)) if i != j) for j in range(len(p))]
    )


def test_with_replacement_frequencies_match_the_distribution_and_torch():
    torch = pytest.importorskip("torch")
    tg.manual_seed(0)
    ours = tg.multinomial(tg.tensor(WEIGHTS), 40000, replacement=True)
    theirs = torch.multinomial(torch.tensor(WEIGHTS), 40000, replacement=True)
    assert ours.dtype is tg.int64 and tuple(ours.shape) == tuple(theirs.shape)
    exact = WEIGHTS / WEIGHTS.sum(1, keepdims=True)
    for draws in (ours.numpy(), theirs.numpy()):
        np.testing.assert_allclose(_frequencies(draws, 4), exact, atol=0.012)
    assert not (ours.numpy()[0] == 1).any()  # a category of weight 0 is never drawn


def test_without_replacement_draw_order_matches_sequential_drawing_and_torch():
    torch = pytest.importorskip("torch")
    tg.manual_seed(1)
    w = np.array([0.5, 0.3, 0.15, 0.05])
    rows = np.tile(w, (30000, 1))
    ours = tg.tensor(rows).multinomial(3).numpy()
    theirs = torch.tensor(rows).multinomial(3).numpy()
    for draws in (ours, theirs):
        assert all(len(set(row)) == 3 for row in draws[:500])  # no index twice in a row
        np.testing.assert_allclose(_frequencies(draws[:, :1].T, 4)[0], w, atol=0.012)
        np.testing.assert_allclose(
            _frequencies(draws[:, 1:2].T, 4)[0], _second_draw_probabilities(w), atol=0.012
        )


def test_shapes_follow_torch():
    torch = pytest.importorskip("torch")
    for weights, n, replacement in [
        (WEIGHTS[0], 3, False),
        (WEIGHTS, 6, True),
        (WEIGHTS[1], 4, False),
    ]:
        ours = tg.multinomial(tg.tensor(weights), n, replacement)
        theirs = torch.multinomial(torch.tensor(weights), n, replacement)
        assert tuple(ours.shape) == tuple(theirs.shape)
    every = tg.multinomial(tg.tensor(WEIGHTS[1]), 4).tolist()
    assert sorted(every) == [0, 1, 2, 3]  # all categories: a permutation


def test_draws_follow_the_seed():
    draws = []
    for _ in range(2):
        tg.manual_seed(5)
        draws.append([tg.multinomial(tg.tensor(WEIGHTS), 2).tolist() for _ in range(3)])
    assert draws[0] == draws[1] and draws[0][0] != draws[0][1]


def test_signature_is_torchs():
    torch = pytest.importorskip("torch")
    first = torch.multinomial.__doc__.strip().splitlines()[0]
    theirs = first.split("(", 1)[1].split(")")[0].split(", ")
    parameters = inspect.signature(tg.multinomial).replace(
        return_annotation=inspect.Signature.empty
    )
    ours = str(parameters)[1:-1].split(", ")
    assert ours == [p for p in theirs if not p.startswith("out")]


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: tg.multinomial(tg.tensor([1, 2]), 1), tg.DTypeError, "floating-point"),
        (lambda: tg.multinomial(tg.ones(2, 2, 2), 1), tg.ShapeError, r"shape \(2, 2, 2\)"),
        (lambda: tg.multinomial(tg.ones(3), 4), tg.ShapeError, "4 samples without replacement"),
        (lambda: tg.multinomial(tg.ones(3), 0), ValueError, "num_samples=0"),
        (lambda: tg.multinomial(tg.tensor([1.0, -1.0]), 1), ValueError, "negative"),
        (lambda: tg.multinomial(tg.tensor([1.0, np.nan]), 1), ValueError, "nan"),
        (lambda: tg.multinomial(tg.zeros(2, 3), 1, True), ValueError, "no weight"),
        (lambda: tg.multinomial(tg.tensor([1.0, 0.0, 0.0]), 2), ValueError, "1 categories of"),
        (lambda: tg.multinomial(tg.ones(3), 1, generator=object()), TypeError, "manual_seed"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize(
    "weights, num_samples, replacement, message",
    [
        ([[1.0, -1.0, 1.0]], 1, True, "negative"),
        ([[1.0, np.nan, 1.0]], 1, False, "nan"),
        ([[1.0, np.inf, 1.0]], 1, True, "infinity"),
        ([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], 1, True, "no weight"),
        ([[1.0, 0.0, 0.0]], 2, False, "1 categories of nonzero weight"),
    ],
)
def test_compiled_draws_refuse_the_weights_eager_refuses(
    weights, num_samples, replacement, message
):
    # The weights are known only as a compiled call runs: the check is a node of its graph,
    # so a compiled draw from bad weights raises as the eager one does, naming the user's line.
    def draw(w):
        return tg.multinomial(w * 1.0, num_samples, replacement)

    good, bad = tg.ones(len(weights), 3), tg.tensor(weights)
    with pytest.raises(ValueError, match=message):
        draw(bad)
    compiled = tg.compile(draw)
    assert compiled(good).shape == (len(weights), num_samples)  # (compiled for this shape)
    with pytest.raises(ValueError, match=message) as raised:
        compiled(bad)
    assert "in compiled code" in str(raised.value) and "test_multinomial_topk.py" in str(
        raised.value
    )
    assert len(compiled.recompile_reasons) == 0  # (the compiled program raised, not eager code)


class _Policy(nn.Module):
    """REINFORCE-style: samples actions from its softmax and scores their log-probabilities."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 5)

    def forward(self, x):
        logp = self.linear(x).log_softmax(-1)
        actions = tg.multinomial(logp.exp(), 2)
        again = logp.exp().multinomial(3, replacement=True)
        return -(logp.gather(1, actions).sum() + logp.gather(1, again).mean()), actions, again


def _policies():
    tg.manual_seed(3)
    models = [_Policy().double() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    return models


def test_compiled_module_draws_what_eager_draws():
    models = _policies()
    compiled = tg.compile(models[1])
    x = tg.tensor(RNG.standard_normal((4, 3)))
    for seed in (7, 8):
        tg.manual_seed(seed)
        eager = models[0](x)
        tg.manual_seed(seed)
        got = compiled(x)
        for a, b in zip(got[1:], eager[1:], strict=True):
            assert a.tolist() == b.tolist()
        np.testing.assert_allclose(got[0].item(), eager[0].item(), rtol=1e-12)
        eager[0].backward()
        got[0].backward()
    for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
        np.testing.assert_allclose(q.grad.numpy(), p.grad.numpy(), rtol=1e-10)


def test_compiled_training_step_draws_what_eager_draws():
    models = _policies()
    opts = [tg.optim.Adam(m.parameters(), lr=0.05) for m in models]
    x = tg.tensor(RNG.standard_normal((4, 3)))

    def train_step(model, opt):
        opt.zero_grad()
        loss, actions, _ = model(x)
        loss.backward()
        opt.step()
        return loss, actions

    compiled_step = tg.compile(train_step)
    tg.manual_seed(11)
    eager = [train_step(models[0], opts[0]) for _ in range(4)]
    tg.manual_seed(11)
    compiled = [compiled_step(models[1], opts[1]) for _ in range(4)]
    for (loss, actions), (want, want_actions) in zip(compiled, eager, strict=True):
        assert actions.tolist() == want_actions.tolist()
        np.testing.assert_allclose(loss.item(), want.item(), rtol=1e-10)
    assert len({str(a.tolist()) for _, a in eager}) > 1  # new draws each step
    for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
        np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), rtol=1e-10)


# --- topk(sorted=False) ---------------------------------------------------------------------


@pytest.mark.parametrize("largest", [True, False])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_unsorted_topk_is_torchs_set_in_the_inputs_order(dim, largest):
    torch = pytest.importorskip("torch")
    values = RNG.permutation(60).reshape(3, 4, 5) * 0.1  # distinct: one right set
    ours = tg.tensor(values).topk(3, dim, largest, sorted=False)
    theirs = torch.tensor(values).topk(3, dim, largest, sorted=False)
    assert tuple(ours.indices.shape) == tuple(theirs.indices.shape)
    order = np.sort(theirs.indices.numpy(), axis=dim)  # PyTorch's set, in the input's order
    np.testing.assert_array_equal(ours.indices.numpy(), order)
    np.testing.assert_array_equal(ours.values.numpy(), np.take_along_axis(values, order, dim))


def test_unsorted_topk_ties_pick_the_sorted_ones():
    x = tg.tensor([[2.0, 5.0, 2.0, 5.0, 1.0, 2.0]])
    assert x.topk(3, sorted=False).indices.tolist() == [[0, 1, 3]]
    assert x.topk(3).indices.tolist() == [[1, 3, 0]]
    assert x.topk(2, largest=False, sorted=False).indices.tolist() == [[0, 4]]


def test_unsorted_topk_gradients_match_finite_differences_and_torch():
    torch = pytest.importorskip("torch")
    values = RNG.permutation(12).reshape(3, 4) * 0.3 - 1.5
    assert gradcheck(
        lambda x: x.topk(2, 0, sorted=False).values, (tg.tensor(values, requires_grad=True),)
    )
    weights = RNG.standard_normal((3, 2))
    ours, theirs = tg.tensor(values, requires_grad=True), torch.tensor(values, requires_grad=True)
    (ours.topk(2, sorted=False).values * tg.tensor(weights)).sum().backward()
    out = theirs.topk(2, sorted=False)
    # PyTorch's order is its own: weight each element by its position in the input's order
    rank = torch.tensor(np.argsort(np.argsort(out.indices.numpy(), 1), 1))
    (out.values * torch.tensor(weights).gather(1, rank)).sum().backward()
    np.testing.assert_allclose(ours.grad.numpy(), theirs.grad.numpy(), rtol=1e-12)


class _TopKPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 6)

    def forward(self, x):
        scores = self.linear(x)
        top = scores.topk(3, dim=-1, sorted=False)
        return (top.values * tg.arange(3, dtype=scores.dtype)).sum(), top.indices


def test_unsorted_topk_compiled_module_and_step_match_eager():
    tg.manual_seed(0)
    models = [_TopKPool().double() for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    x = tg.tensor(RNG.standard_normal((5, 4)))
    eager, compiled = models[0](x), tg.compile(models[1])(x)
    assert compiled[1].tolist() == eager[1].tolist()
    np.testing.assert_allclose(compiled[0].item(), eager[0].item(), rtol=1e-12)

    def train_step(model, opt):
        opt.zero_grad()
        loss = model(x)[0].square()
        loss.backward()
        opt.step()
        return loss

    opts = [tg.optim.SGD(m.parameters(), lr=0.01) for m in models]
    compiled_step = tg.compile(train_step)
    for _ in range(3):
        want, got = train_step(models[0], opts[0]), compiled_step(models[1], opts[1])
        np.testing.assert_allclose(got.item(), want.item(), rtol=1e-10)
    for p, q in zip(models[0].parameters(), models[1].parameters(), strict=True):
        np.testing.assert_allclose(q.detach().numpy(), p.detach().numpy(), rtol=1e-10)
