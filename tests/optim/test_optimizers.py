"""SGD, Adam and AdamW against closed-form NumPy versions of PyTorch's update rules; state,
zero_grad, parameter groups, state dicts and argument checks."""

import copy

import numpy as np
import pytest

import tracegrad as tg
from tracegrad import nn, optim

RNG = np.random.default_rng(0)


def param(a):
    return nn.Parameter(tg.tensor(np.asarray(a, np.float64)))


def set_grad(p, g):
    p.grad = tg.tensor(np.asarray(g, np.float64))


def val(t):
    return t.detach().numpy()


def run(opt, params, grads_per_step):
    """Feed fixed gradients through ``opt``; return each parameter's value after every step."""
    history = []
    for grads in grads_per_step:
        for p, g in zip(params, grads):
            set_grad(p, g)
        opt.step()
        history.append([val(p).copy() for p in params])
    return history


# --- NumPy references (PyTorch's documented algorithms) ------------------------------------------


def ref_sgd(p, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
    p, buf, out = p.copy(), None, []
    for g in grads:
        g = g + weight_decay * p
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
        out.append(p)
    return out


def ref_adam(p, grads, lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, amsgrad=False, decoupled=False):
    p = p.copy()
    m, v, vmax, out = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p), []
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        vmax = np.maximum(vmax, v)
        second = vmax if amsgrad else v
        mhat = m / (1 - b1**t)
        p = p - lr * mhat / (np.sqrt(second) / np.sqrt(1 - b2**t) + eps)
        out.append(p)
    return out


P0 = RNG.standard_normal((3, 4))
GRADS = [RNG.standard_normal((3, 4)) for _ in range(5)]


# --- SGD -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"momentum": 0.9},
        {"momentum": 0.9, "dampening": 0.3},
        {"weight_decay": 0.1},
        {"momentum": 0.8, "nesterov": True},
        {"momentum": 0.9, "nesterov": True, "weight_decay": 0.05},
    ],
)
def test_sgd_matches_closed_form(kwargs):
    p = param(P0)
    opt = optim.SGD([p], lr=0.1, **kwargs)
    history = run(opt, [p], [[g] for g in GRADS])
    for got, want in zip(history, ref_sgd(P0, GRADS, 0.1, **kwargs)):
        np.testing.assert_allclose(got[0], want, rtol=1e-13, atol=1e-15)


def test_sgd_single_step_by_hand():
    p = param([1.0, -2.0])
    set_grad(p, [0.5, 0.25])
    optim.SGD([p], lr=0.1, weight_decay=0.2).step()
    # g + wd * p = [0.7, -0.15]
    np.testing.assert_allclose(val(p), [1.0 - 0.07, -2.0 + 0.015], rtol=1e-14)


def test_sgd_first_momentum_step_ignores_dampening():
    p = param([1.0])
    opt = optim.SGD([p], lr=1.0, momentum=0.5, dampening=0.5)
    run(opt, [p], [[[2.0]]])
    np.testing.assert_allclose(val(opt.state[p]["momentum_buffer"]), [2.0])
    run(opt, [p], [[[2.0]]])
    # 0.5 * 2 + (1 - 0.5) * 2
    np.testing.assert_allclose(val(opt.state[p]["momentum_buffer"]), [2.0])
    np.testing.assert_allclose(val(p), [1.0 - 2.0 - 2.0])


def test_sgd_momentum_buffer_state_over_steps():
    p = param(P0)
    opt = optim.SGD([p], lr=0.1, momentum=0.9)
    run(opt, [p], [[g] for g in GRADS[:3]])
    buf = GRADS[0]
    for g in GRADS[1:3]:
        buf = 0.9 * buf + g
    np.testing.assert_allclose(val(opt.state[p]["momentum_buffer"]), buf, rtol=1e-13)
    assert isinstance(opt.state[p]["momentum_buffer"], tg.Tensor)


def test_sgd_maximize_ascends():
    p = param([1.0])
    set_grad(p, [2.0])
    optim.SGD([p], lr=0.1, maximize=True).step()
    np.testing.assert_allclose(val(p), [1.2])


def test_sgd_default_lr_and_plain_sgd_keeps_no_state():
    p = param([1.0])
    opt = optim.SGD([p])
    assert opt.defaults["lr"] == 1e-3
    run(opt, [p], [[[1.0]]])
    np.testing.assert_allclose(val(p), [1.0 - 1e-3])
    assert "momentum_buffer" not in opt.state.get(p, {})


# --- Adam and AdamW ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"weight_decay": 0.1},
        {"amsgrad": True},
        {"betas": (0.8, 0.99), "eps": 1e-3},
        {"amsgrad": True, "weight_decay": 0.05},
    ],
)
def test_adam_matches_closed_form(kwargs):
    p = param(P0)
    opt = optim.Adam([p], lr=0.01, **kwargs)
    # gradients that shrink, so amsgrad's running max differs from v
    grads = [g * 3.0**-i for i, g in enumerate(GRADS)]
    history = run(opt, [p], [[g] for g in grads])
    b1, b2 = kwargs.get("betas", (0.9, 0.999))
    want = ref_adam(
        P0,
        grads,
        0.01,
        b1,
        b2,
        kwargs.get("eps", 1e-8),
        kwargs.get("weight_decay", 0.0),
        kwargs.get("amsgrad", False),
    )
    for got, w in zip(history, want):
        np.testing.assert_allclose(got[0], w, rtol=1e-12, atol=1e-15)
    if kwargs.get("amsgrad"):
        assert not np.allclose(want[-1], ref_adam(P0, grads, 0.01, b1, b2, wd=0.0)[-1])


def test_adam_first_step_moves_each_entry_by_about_lr():
    p = param([1.0, 1.0, 1.0])
    set_grad(p, [1e-2, -5.0, 100.0])
    optim.Adam([p], lr=0.1).step()
    # m_hat / sqrt(v_hat) = sign(g) on the first step
    np.testing.assert_allclose(val(p), [0.9, 1.1, 0.9], rtol=1e-6)


def test_adamw_decoupled_decay_and_default_weight_decay():
    p = param(P0)
    opt = optim.AdamW([p], lr=0.01)
    assert opt.param_groups[0]["weight_decay"] == 1e-2
    history = run(opt, [p], [[g] for g in GRADS])
    want = ref_adam(P0, GRADS, 0.01, wd=1e-2, decoupled=True)
    for got, w in zip(history, want):
        np.testing.assert_allclose(got[0], w, rtol=1e-12, atol=1e-15)
    # decoupled decay differs from Adam's L2 penalty with the same coefficient
    coupled = ref_adam(P0, GRADS, 0.01, wd=1e-2)
    assert not np.allclose(want[-1], coupled[-1], rtol=1e-9, atol=0)


def test_adamw_zero_gradient_only_decays():
    p = param([2.0, -4.0])
    set_grad(p, [0.0, 0.0])
    optim.AdamW([p], lr=0.1, weight_decay=0.5).step()
    np.testing.assert_allclose(val(p), [2.0 * 0.95, -4.0 * 0.95], rtol=1e-14)


def test_adam_state_step_count_and_moments():
    p = param(P0)
    opt = optim.Adam([p], lr=0.01, amsgrad=True)
    run(opt, [p], [[g] for g in GRADS[:3]])
    state = opt.state[p]
    assert float(state["step"].item()) == 3.0
    m = np.zeros_like(P0)
    v = np.zeros_like(P0)
    for g in GRADS[:3]:
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
    np.testing.assert_allclose(val(state["exp_avg"]), m, rtol=1e-13)
    np.testing.assert_allclose(val(state["exp_avg_sq"]), v, rtol=1e-13)
    assert tuple(state["max_exp_avg_sq"].shape) == P0.shape


def test_adam_keeps_float32_parameters_float32():
    p = nn.Parameter(tg.randn(4, 3))
    p.grad = tg.randn(4, 3)
    opt = optim.Adam([p], lr=0.1, weight_decay=0.1)
    opt.step()
    opt.step()
    assert p.dtype == tg.float32
    assert opt.state[p]["exp_avg"].dtype == tg.float32


def test_step_skips_parameters_without_gradients():
    a, b = param([1.0]), param([1.0])
    opt = optim.Adam([a, b], lr=0.1)
    set_grad(a, [1.0])
    opt.step()
    assert val(b)[0] == 1.0 and b not in opt.state
    assert float(opt.state[a]["step"].item()) == 1.0


def test_step_bumps_the_parameter_version():
    p = param([1.0, 2.0])
    loss = (p * p).sum()
    set_grad(p, [1.0, 1.0])
    optim.SGD([p], lr=0.1).step()
    with pytest.raises(RuntimeError):
        loss.backward()


def test_step_with_closure_returns_the_loss():
    p = param([3.0])
    opt = optim.SGD([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert loss.item() == 9.0
    np.testing.assert_allclose(val(p), [3.0 - 0.6])


# --- zero_grad and parameter groups --------------------------------------------------------------


def test_zero_grad_set_to_none_true_and_false():
    a, b = param([1.0, 2.0]), param([3.0])
    opt = optim.SGD([a, b], lr=0.1)
    set_grad(a, [5.0, 6.0])
    opt.zero_grad(set_to_none=False)
    np.testing.assert_array_equal(val(a.grad), [0.0, 0.0])
    assert b.grad is None
    opt.zero_grad()
    assert a.grad is None and b.grad is None


def test_gradients_accumulate_until_zero_grad():
    p = param([1.0])
    opt = optim.SGD([p], lr=0.1)
    (p * 2).sum().backward()
    (p * 2).sum().backward()
    np.testing.assert_array_equal(val(p.grad), [4.0])
    opt.zero_grad()
    (p * 2).sum().backward()
    np.testing.assert_array_equal(val(p.grad), [2.0])


def test_param_groups_with_different_lr():
    a, b = param([1.0]), param([1.0])
    opt = optim.SGD([{"params": [a]}, {"params": b, "lr": 0.5}], lr=0.1, momentum=0.0)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]
    assert opt.param_groups[1]["momentum"] == 0.0
    run(opt, [a, b], [[[1.0], [1.0]]])
    np.testing.assert_allclose(val(a), [0.9])
    np.testing.assert_allclose(val(b), [0.5])
    # changing a group's lr takes effect at the next step, as schedulers rely on
    opt.param_groups[0]["lr"] = 0.01
    run(opt, [a, b], [[[1.0], [0.0]]])
    np.testing.assert_allclose(val(a), [0.89])


def test_add_param_group_and_duplicates():
    a, b = param([1.0]), param([1.0])
    opt = optim.Adam([a], lr=0.1)
    opt.add_param_group({"params": [b], "lr": 0.2})
    assert opt.param_groups[1]["betas"] == (0.9, 0.999) and opt.param_groups[1]["lr"] == 0.2
    with pytest.raises(ValueError):
        opt.add_param_group({"params": [a]})


def test_model_parameters_generator_is_accepted():
    model = nn.Linear(3, 2)
    opt = optim.SGD(model.parameters(), lr=0.1)
    assert len(opt.param_groups[0]["params"]) == 2


# --- state dicts ---------------------------------------------------------------------------------


def _twin_models():
    tg.manual_seed(0)
    a = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    b = copy.deepcopy(a)
    return a, b


def _train(model, opt, steps, seed):
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(steps):
        x = tg.tensor(rng.standard_normal((8, 3)))
        y = tg.tensor(rng.standard_normal((8, 1)))
        opt.zero_grad()
        loss = nn.MSELoss()(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
        (optim.Adam, {"lr": 0.01, "amsgrad": True}),
        (optim.AdamW, {"lr": 0.01}),
    ],
)
def test_state_dict_round_trip_continues_identically(cls, kwargs):
    a, b = _twin_models()
    opt_a = cls(a.parameters(), **kwargs)
    _train(a, opt_a, 3, seed=1)
    # b becomes a snapshot of a: weights and optimizer state, loaded into fresh objects
    b.load_state_dict(a.state_dict())
    opt_b = cls(b.parameters(), lr=123.0)
    saved = opt_a.state_dict()
    opt_b.load_state_dict(saved)
    assert opt_b.param_groups[0]["lr"] == kwargs["lr"]
    losses_a = _train(a, opt_a, 4, seed=2)
    losses_b = _train(b, opt_b, 4, seed=2)
    assert losses_a == losses_b
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_array_equal(val(pa), val(pb))
    # the saved dict is a snapshot: training on did not change it
    first = saved["state"][0]
    key = "momentum_buffer" if cls is optim.SGD else "exp_avg"
    assert not np.array_equal(val(first[key]), val(opt_a.state[next(a.parameters())][key]))


def test_state_dict_layout_like_pytorch():
    a, b = param([1.0]), param([2.0])
    opt = optim.Adam([{"params": [a]}, {"params": [b], "lr": 0.5}])
    run(opt, [a, b], [[[1.0], [1.0]]])
    sd = opt.state_dict()
    assert [g["params"] for g in sd["param_groups"]] == [[0], [1]]
    assert sd["param_groups"][1]["lr"] == 0.5
    assert set(sd["state"]) == {0, 1}
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}


def test_load_state_dict_rejects_a_different_layout():
    opt = optim.SGD([param([1.0]), param([2.0])], lr=0.1)
    other = optim.SGD([param([1.0])], lr=0.1)
    with pytest.raises(ValueError):
        other.load_state_dict(opt.state_dict())


# --- argument checks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda p: optim.SGD(p, lr=0.1, nesterov=True),
        lambda p: optim.SGD(p, lr=0.1, momentum=0.9, dampening=0.1, nesterov=True),
        lambda p: optim.SGD(p, lr=-0.1),
        lambda p: optim.SGD(p, lr=0.1, momentum=-0.5),
        lambda p: optim.SGD(p, lr=0.1, weight_decay=-1.0),
        lambda p: optim.Adam(p, lr=-1e-3),
        lambda p: optim.Adam(p, betas=(1.0, 0.999)),
        lambda p: optim.Adam(p, betas=(0.9, -0.1)),
        lambda p: optim.Adam(p, eps=-1.0),
        lambda p: optim.AdamW(p, weight_decay=-0.1),
    ],
)
def test_bad_settings_raise_value_error(make):
    with pytest.raises(ValueError):
        make([param([1.0])])


@pytest.mark.parametrize("cls", [optim.SGD, optim.Adam, optim.AdamW])
def test_empty_parameter_list_raises_value_error(cls):
    with pytest.raises(ValueError, match="empty"):
        cls([], lr=0.1)
    with pytest.raises(ValueError, match="empty"):
        cls(nn.ReLU().parameters(), lr=0.1)


def test_non_leaf_tensors_are_rejected():
    p = param([1.0])
    with pytest.raises(ValueError, match="leaf"):
        optim.SGD([p * 2], lr=0.1)
