"""Adagrad, RMSprop, Adadelta and LBFGS against PyTorch in float64: the same small model from
the same weights, 20 steps; parameters, optimizer state (by PyTorch's state_dict layout) and
parameter groups agree to 1e-10."""

import numpy as np
import pytest

import tracegrad as tg

torch = pytest.importorskip("torch")

TOL = 1e-10
STEPS = 20

OPTIMIZERS = {
    "adagrad": ("Adagrad", {}),
    "adagrad-options": (
        "Adagrad",
        dict(lr=0.05, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.3, eps=1e-6),
    ),
    "adagrad-maximize": ("Adagrad", dict(maximize=True)),
    "rmsprop": ("RMSprop", {}),
    "rmsprop-momentum": ("RMSprop", dict(lr=0.005, momentum=0.9, weight_decay=0.01)),
    "rmsprop-centered": ("RMSprop", dict(lr=0.005, alpha=0.9, centered=True, momentum=0.5)),
    "rmsprop-centered-plain": ("RMSprop", dict(centered=True, eps=1e-4)),
    "adadelta": ("Adadelta", {}),
    "adadelta-options": ("Adadelta", dict(lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.05)),
    # A few iterations per step: near the minimum, L-BFGS divides by curvatures of 1e-10, and
    # the last bits of two libraries' sums (1e-16 apart) grow past 1e-10 in the 400 iterations
    # of 20 default steps.
    "lbfgs": ("LBFGS", dict(lr=0.5, max_iter=3, history_size=4)),
    "lbfgs-lr-1": ("LBFGS", dict(max_iter=3)),
    "lbfgs-strong-wolfe": (
        "LBFGS",
        dict(max_iter=2, history_size=5, line_search_fn="strong_wolfe"),
    ),
}


def make_models():
    tg.manual_seed(0)
    model = tg.nn.Sequential(tg.nn.Linear(5, 7), tg.nn.Tanh(), tg.nn.Linear(7, 2)).double()
    twin = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))
    twin = twin.double()
    twin.load_state_dict({k: torch.tensor(v.numpy()) for k, v in model.state_dict().items()})
    return model, twin


def data():
    rng = np.random.default_rng(3)
    return rng.standard_normal((12, 5)), rng.standard_normal((12, 2))


def train(lib, model, name):
    """STEPS steps of ``lib``'s optimizer ``name``; returns (optimizer, losses)."""
    cls, kwargs = OPTIMIZERS[name]
    opt = getattr(lib.optim, cls)(model.parameters(), **kwargs)
    x, y = (lib.tensor(a) for a in data())

    def closure():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    losses = []
    for _ in range(STEPS):
        if cls == "LBFGS":
            losses.append(opt.step(closure).item())
        else:
            losses.append(closure().item())
            opt.step()
    return opt, losses


def close(got, want, what):
    """Tensors, numbers and lists of them (LBFGS's history) as PyTorch keeps them."""
    if isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), what
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            close(g, w, f"{what}[{i}]")
    elif isinstance(want, torch.Tensor):
        assert isinstance(got, tg.Tensor), f"{what}: {type(got).__name__}, not a tensor"
        assert got.shape == tuple(want.shape), what
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=TOL, atol=TOL, err_msg=what)
    elif want is None:
        assert got is None, what
    else:
        assert float(got) == pytest.approx(float(want), rel=TOL, abs=TOL), what


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_trajectory_and_state_match_torch(name):
    model, twin = make_models()
    opt, losses = train(tg, model, name)
    twin_opt, twin_losses = train(torch, twin, name)
    np.testing.assert_allclose(losses, twin_losses, rtol=TOL, atol=TOL)
    # it trained (up the loss, for maximize)
    assert (losses[-1] > losses[0]) == OPTIMIZERS[name][1].get("maximize", False)
    twins = dict(twin.named_parameters())
    for key, p in model.named_parameters():
        np.testing.assert_allclose(
            p.detach().numpy(), twins[key].detach().numpy(), rtol=TOL, atol=TOL
        )
    state, twin_state = opt.state_dict(), twin_opt.state_dict()
    assert state["state"].keys() == twin_state["state"].keys()
    for index, entries in twin_state["state"].items():
        assert set(state["state"][index]) == set(entries), f"state of parameter {index}"
        for key, value in entries.items():
            close(state["state"][index][key], value, f"state[{index}][{key}]")
    for group, twin_group in zip(state["param_groups"], twin_state["param_groups"], strict=True):
        # PyTorch's groups also hold its implementation switches (foreach, fused, ...)
        assert set(group) <= set(twin_group)
        for key in group:
            assert group[key] == twin_group[key], key


@pytest.mark.parametrize("cls", ["Adagrad", "RMSprop", "Adadelta", "LBFGS"])
def test_defaults_are_torch_defaults(cls):
    model, twin = make_models()
    defaults = getattr(tg.optim, cls)(model.parameters()).defaults
    twin_defaults = getattr(torch.optim, cls)(twin.parameters()).defaults
    assert set(defaults) <= set(twin_defaults)
    assert defaults == {k: twin_defaults[k] for k in defaults}


def test_adagrad_fills_its_state_when_built_as_torch_does():
    model, twin = make_models()
    state = tg.optim.Adagrad(model.parameters(), initial_accumulator_value=0.5).state_dict()
    twin_state = torch.optim.Adagrad(twin.parameters(), initial_accumulator_value=0.5)
    for index, entries in twin_state.state_dict()["state"].items():
        for key, value in entries.items():
            close(state["state"][index][key], value, f"state[{index}][{key}]")
