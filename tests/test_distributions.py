"""tg.distributions: values and gradients against finite differences and torch.distributions,
sampling reproducible under tg.manual_seed, and compiled code drawing as eager code does."""

import numpy as np
import pytest

import tracegrad as tg
from tracegrad import nn, optim
from tracegrad.autograd import gradcheck
from tracegrad.distributions import Bernoulli, Categorical, Normal

RNG = np.random.default_rng(0)
LOC = RNG.normal(size=(3,))
SCALE = RNG.uniform(0.5, 2.0, size=(3,))
VALUE = RNG.normal(size=(4, 3))
PROBS = RNG.uniform(0.1, 1.0, size=(2, 4))  # unnormalized: the distribution normalizes
LOGITS = RNG.normal(size=(2, 4))
CATEGORIES = np.array([[0, 3], [2, 2], [1, 0]])
BERNOULLI_P = np.array([0.1, 0.5, 0.93])
BERNOULLI_LOGITS = np.array([-2.0, 0.0, 3.5])
BITS = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])

# name -> (distribution class, parameter names and values, a value to score)
CASES = {
    "normal": (Normal, {"loc": LOC, "scale": SCALE}, VALUE),
    "categorical probs": (Categorical, {"probs": PROBS}, CATEGORIES),
    "categorical logits": (Categorical, {"logits": LOGITS}, CATEGORIES),
    "bernoulli probs": (Bernoulli, {"probs": BERNOULLI_P}, BITS),
    "bernoulli logits": (Bernoulli, {"logits": BERNOULLI_LOGITS}, BITS),
}


def _scores(cls, names, value):
    """A function of the parameters: log_prob and entropy, weighted so every element counts."""

    def fn(*params):
        d = cls(**dict(zip(names, params)))
        log_prob, entropy = d.log_prob(value), d.entropy()
        weights = np.arange(1, log_prob.numel() + 1).reshape(tuple(log_prob.shape))
        return (log_prob * tg.tensor(weights, dtype=tg.float64)).sum() + 0.5 * entropy.sum()

    return fn


@pytest.mark.parametrize("case", CASES)
def test_log_prob_and_entropy_gradients_match_finite_differences(case):
    cls, params, value = CASES[case]
    inputs = [tg.tensor(v, requires_grad=True) for v in params.values()]
    fn = _scores(cls, list(params), tg.tensor(value))
    assert gradcheck(fn, inputs)


@pytest.mark.parametrize("case", CASES)
def test_values_and_gradients_match_torch(case):
    torch = pytest.importorskip("torch")
    cls, params, value = CASES[case]
    ours = cls(**{k: tg.tensor(v, requires_grad=True) for k, v in params.items()})
    theirs_cls = getattr(torch.distributions, cls.__name__)
    theirs = theirs_cls(**{k: torch.tensor(v, requires_grad=True) for k, v in params.items()})
    our_value, their_value = tg.tensor(value), torch.tensor(value)
    for name in ["log_prob", "entropy", "mean", "variance", "stddev", "probs", "logits"]:
        if not hasattr(theirs, name) or (cls is Normal and name in ("probs", "logits")):
            continue
        mine, ref = getattr(ours, name), getattr(theirs, name)
        if name == "log_prob":
            mine, ref = mine(our_value), ref(their_value)
        elif name == "entropy":
            mine, ref = mine(), ref()
        np.testing.assert_allclose(
            mine.detach().numpy(), ref.detach().numpy(), rtol=1e-12, err_msg=name
        )
    assert tuple(ours.batch_shape) == tuple(theirs.batch_shape)
    our_params = [tg.tensor(v, requires_grad=True) for v in params.values()]
    their_params = [torch.tensor(v, requires_grad=True) for v in params.values()]
    _scores(cls, list(params), our_value)(*our_params).backward()
    their_d = theirs_cls(**dict(zip(params, their_params)))
    their_log_prob = their_d.log_prob(their_value)
    weights = torch.arange(1, their_log_prob.numel() + 1, dtype=torch.float64).reshape(
        their_log_prob.shape
    )
    ((their_log_prob * weights).sum() + 0.5 * their_d.entropy().sum()).backward()
    for mine, ref in zip(our_params, their_params):
        np.testing.assert_allclose(mine.grad.numpy(), ref.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_rsample_is_loc_plus_scale_times_a_seeded_normal_draw():
    loc = tg.tensor(LOC, requires_grad=True)
    scale = tg.tensor(SCALE, requires_grad=True)
    tg.manual_seed(3)
    x = Normal(loc, scale).rsample((5,))
    tg.manual_seed(3)
    eps = tg.randn(5, 3, dtype=tg.float64)
    assert x.shape == (5, 3) and x.dtype is tg.float64
    np.testing.assert_array_equal(x.detach().numpy(), (LOC + eps.numpy() * SCALE))
    x.sum().backward()
    np.testing.assert_array_equal(loc.grad.numpy(), [5.0, 5.0, 5.0])
    np.testing.assert_allclose(scale.grad.numpy(), eps.numpy().sum(0))
    sample = Normal(loc, scale).sample()
    assert not sample.requires_grad and sample.shape == (3,)


def test_sampling_is_reproducible_and_shaped():
    d = Categorical(tg.tensor(PROBS))
    tg.manual_seed(7)
    first = [d.sample().tolist(), d.sample((3, 5)).tolist(), Bernoulli(0.3).sample((4,)).tolist()]
    tg.manual_seed(7)
    again = [d.sample().tolist(), d.sample((3, 5)).tolist(), Bernoulli(0.3).sample((4,)).tolist()]
    assert first == again
    assert np.array(first[1]).shape == (3, 5, 2)
    assert d.sample().dtype is tg.int64 and Bernoulli(0.3).sample().dtype is tg.float32
    assert Normal(0.0, 1.0).sample(4).shape == (4,)


def test_sample_frequencies_follow_the_probabilities():
    tg.manual_seed(0)
    n = 20000
    probs = np.array([0.1, 0.0, 0.6, 0.3, 0.0])  # zero categories, the last one too
    counts = np.bincount(Categorical(tg.tensor(probs)).sample((n,)).numpy(), minlength=5)
    assert counts[1] == counts[4] == 0
    np.testing.assert_allclose(counts / n, probs, atol=4 * np.sqrt(0.25 / n))
    bits = Bernoulli(tg.tensor([0.0, 0.25, 1.0])).sample((n,)).numpy()
    np.testing.assert_allclose(bits.mean(0), [0.0, 0.25, 1.0], atol=4 * np.sqrt(0.25 / n))
    x = Normal(tg.tensor([1.0, -2.0]), tg.tensor([0.5, 3.0])).sample((n,)).numpy()
    np.testing.assert_allclose(x.mean(0), [1.0, -2.0], atol=4 * 3.0 / np.sqrt(n))
    np.testing.assert_allclose(x.std(0), [0.5, 3.0], rtol=0.03)


def test_one_hot_certain_rows_always_draw_their_category():
    tg.manual_seed(1)
    rows = tg.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    assert (Categorical(rows).sample((500,)).numpy() == [2, 0]).all()


def test_invalid_arguments_raise_naming_the_line():
    for make, message in [
        (lambda: Normal(0.0, tg.tensor([1.0, -1.0])), "scale must be positive"),
        (lambda: Categorical(tg.tensor([0.5, -0.1])), "probs must be non-negative"),
        (lambda: Bernoulli(tg.tensor([1.5])), r"probs must lie in \[0, 1\]"),
        (lambda: Categorical(probs=tg.ones(2), logits=tg.ones(2)), "either probs or logits"),
        (lambda: Bernoulli(), "either probs or logits"),
        (lambda: Categorical(tg.tensor(1.0)), "at least 1-d"),
        (lambda: Categorical(tg.ones(3)).log_prob(tg.tensor([3])), r"category in \[0, 3\)"),
        (lambda: Bernoulli(0.5).log_prob(tg.tensor([0.5])), "value must be 0 or 1"),
    ]:
        with pytest.raises(ValueError, match=message) as info:
            make()
        assert "test_distributions.py" in str(info.value)
    Normal(0.0, -1.0, validate_args=False)  # as in PyTorch, validation can be turned off


def _reparameterized(mu, log_sigma):
    d = Normal(mu, log_sigma.exp())
    x = d.rsample((4,))
    return d.log_prob(x).sum() + (x**2).sum()


def test_compiled_rsample_and_log_prob_match_eager_under_one_seed():
    compiled = tg.compile(_reparameterized)
    for seed in (0, 1):
        results = []
        for fn in (_reparameterized, compiled):
            mu = tg.tensor(LOC, requires_grad=True)
            log_sigma = tg.tensor(np.log(SCALE), requires_grad=True)
            tg.manual_seed(seed)
            out = fn(mu, log_sigma)
            out.backward()
            results.append([out.item(), mu.grad.numpy(), log_sigma.grad.numpy()])
        for eager, traced in zip(*results):
            np.testing.assert_allclose(traced, eager, rtol=1e-12)
    tg.manual_seed(0)
    args = (tg.tensor(LOC), tg.tensor(SCALE))
    assert compiled(*args).item() != compiled(*args).item()  # a new draw on every call


def test_compiled_categorical_sampling_draws_as_eager_code_does():
    def draw(logits):
        d = Categorical(logits=logits)
        a = d.sample((6,))
        return a, d.log_prob(a)

    compiled = tg.compile(draw)
    logits = tg.tensor(LOGITS, dtype=tg.float32)
    tg.manual_seed(4)
    eager = [draw(logits) for _ in range(3)]
    tg.manual_seed(4)
    traced = [compiled(logits) for _ in range(3)]
    for (a, lp), (b, lq) in zip(eager, traced):
        assert a.tolist() == b.tolist()
        np.testing.assert_allclose(lq.numpy(), lp.numpy(), rtol=1e-6)
    assert eager[0][0].tolist() != eager[1][0].tolist()


def _policy_gradient_run(compiled: bool):
    tg.manual_seed(0)
    policy = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3), nn.Softmax(-1))
    opt = optim.Adam(policy.parameters(), lr=1e-2)
    states = tg.randn(8, 4)

    def step(states):
        m = Categorical(policy(states))
        actions = m.sample()
        rewards = (actions == 2).float() - 0.5  # the third action is the good one
        loss = -(m.log_prob(actions) * rewards).mean() - 0.01 * m.entropy().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    step = tg.compile(step) if compiled else step
    losses = [step(states).item() for _ in range(30)]
    return losses, policy(states).detach().numpy()


def test_a_compiled_policy_gradient_step_trains_as_eager_code_does():
    eager_losses, eager_probs = _policy_gradient_run(compiled=False)
    losses, probs = _policy_gradient_run(compiled=True)
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(probs, eager_probs, rtol=1e-4, atol=1e-6)
    assert probs[:, 2].mean() > 0.5  # it learned the good action
