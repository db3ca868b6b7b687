"""Run a port of a PyTorch example as written, four ways, and compare the runs.

A port is the example's model and training step written once against a library ``lib``
(``tracegrad`` or ``torch``) exactly as the example writes it, with only the import changed:

    def make(lib):  # the example's objects: modules, optimizers, anything else the step reads
        model = Net(lib)
        return {"model": model, "opt": lib.optim.Adadelta(model.parameters(), lr=1.0)}

    def step(lib, state, x, y):  # one training step as the example writes it; returns the loss
        state["opt"].zero_grad()
        loss = lib.nn.functional.nll_loss(state["model"](x), y)
        loss.backward()
        state["opt"].step()
        return loss

    run_port(make, step, batches)  # batches: a list of tuples of NumPy arrays

``run_port`` builds the objects once per run and gives every run the same starting parameters
and buffers (a reference build's ``state_dict``, loaded by key, so the port's modules must use
PyTorch's key names), then runs the steps:

- ``torch``: PyTorch eager (when installed), the oracle;
- ``eager``: tracegrad eager;
- ``module``: every module of ``make``'s dict replaced by ``tg.compile(module)`` (the optimizers
  keep the same parameters), the step itself eager;
- ``step``: the whole step compiled, ``tg.compile(lambda *batch: step(tg, state, *batch))``.

It asserts that every tracegrad run matches tracegrad eager (losses and final ``state_dict`` of
every module, tight tolerances: the same float32 arithmetic reordered) and that eager matches
PyTorch (looser: two libraries' float32 kernels), and returns the runs for further checks.
Random draws differ between the libraries, so ports compared with PyTorch use none in training
(dropout 0, or modules in ``eval()`` where the example allows); between tracegrad runs the draws
are equal under ``tg.manual_seed``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

import tracegrad as tg

MODES = ("eager", "module", "step")


@dataclasses.dataclass
class Run:
    """One run of a port: the loss of every step and every module's final state."""

    losses: list[float]
    states: dict[str, dict[str, np.ndarray]]


def is_module(obj) -> bool:
    return hasattr(obj, "state_dict") and hasattr(obj, "parameters") and callable(obj)


def module_states(state: dict) -> dict[str, dict[str, np.ndarray]]:
    return {
        key: {name: to_numpy(value) for name, value in obj.state_dict().items()}
        for key, obj in state.items()
        if is_module(obj)
    }


def to_numpy(value) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach()
    if hasattr(value, "cpu"):
        value = value.cpu()
    return np.array(value.numpy() if hasattr(value, "numpy") else value)


def load_states(lib, state: dict, initial: dict[str, dict[str, np.ndarray]]) -> None:
    for key, arrays in initial.items():
        tensors = {name: lib.tensor(array) for name, array in arrays.items()}
        state[key].load_state_dict(tensors)


def as_batch(lib, arrays: Sequence[np.ndarray]) -> tuple:
    return tuple(lib.tensor(array) for array in arrays)


def loss_value(loss) -> float:
    return float(loss.item() if hasattr(loss, "item") else loss)


def run(lib, mode: str, make: Callable, step: Callable, batches, initial, seed: int) -> Run:
    lib.manual_seed(seed)
    state = make(lib)
    load_states(lib, state, initial)
    if mode == "module":
        state.update({key: tg.compile(obj) for key, obj in state.items() if is_module(obj)})

    def eager_step(*batch):
        return step(lib, state, *batch)

    call = tg.compile(eager_step) if mode == "step" else eager_step
    losses = [loss_value(call(*as_batch(lib, batch))) for batch in batches]
    return Run(losses, module_states(state))


def assert_runs_close(run: Run, reference: Run, rtol: float, atol: float, what: str) -> None:
    np.testing.assert_allclose(run.losses, reference.losses, rtol=rtol, atol=atol, err_msg=what)
    for key, arrays in reference.states.items():
        for name, expected in arrays.items():
            np.testing.assert_allclose(
                run.states[key][name],
                expected,
                rtol=rtol,
                atol=atol,
                err_msg=f"{what}: {key}.{name}",
            )


def import_torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


# Compiled against eager under Adam or AdamW, float32: an update made of a gradient near 0
# follows that gradient's rounding, which the compiled program's products may round otherwise
# (a product computed transposed, on OpenBLAS with AVX-512); compared as eager is with PyTorch.
ADAM_TOLERANCES = {"rtol": 1e-4, "atol": 1e-5}


def run_port(
    make: Callable,
    step: Callable,
    batches: Sequence[Sequence[np.ndarray]],
    *,
    modes: Sequence[str] = MODES,
    seed: int = 0,
    rtol: float = 1e-5,
    atol: float = 1e-6,
    torch_rtol: float = 1e-4,
    torch_atol: float = 1e-5,
) -> dict[str, Run]:
    """Run the port eagerly, compiled and in PyTorch; assert they agree; return the runs."""
    torch = import_torch()
    reference_lib = torch if torch is not None else tg
    reference_lib.manual_seed(seed)
    initial = module_states(make(reference_lib))
    runs = {mode: run(tg, mode, make, step, batches, initial, seed) for mode in ("eager", *modes)}
    for mode in modes:
        assert_runs_close(runs[mode], runs["eager"], rtol, atol, f"{mode} vs eager")
    if torch is not None:
        runs["torch"] = run(torch, "eager", make, step, batches, initial, seed)
        assert_runs_close(runs["eager"], runs["torch"], torch_rtol, torch_atol, "eager vs torch")
    return runs
