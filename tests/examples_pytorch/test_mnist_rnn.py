"""Port of pytorch/examples mnist_rnn: its Net (an LSTM over the 28 rows of an image with
batch_first=True, the last output through BatchNorm1d, Dropout2d and two Linear layers), trained
by its train() with Adadelta, and by its main() loop of epochs with a StepLR schedule stepped
after each, on synthetic 28x28 images."""

from __future__ import annotations

import math

import numpy as np
import pytest
from harness import (
    MODES,
    Run,
    as_batch,
    assert_runs_close,
    import_torch,
    load_states,
    loss_value,
    module_states,
    run,
    run_port,
)

import tracegrad as tg

# The example hands Dropout2d a 2-D input (N, 64); both libraries warn that it is meant for 3-D
# or 4-D inputs, and apply it elementwise.
pytestmark = pytest.mark.filterwarnings("ignore:dropout2d")


def net_class(lib):
    nn, F = lib.nn, lib.nn.functional

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = nn.LSTM(input_size=28, hidden_size=64, batch_first=True)
            self.batchnorm = nn.BatchNorm1d(64)
            self.dropout1 = nn.Dropout2d(0.25)
            self.dropout2 = nn.Dropout2d(0.5)
            self.fc1 = nn.Linear(64, 32)
            self.fc2 = nn.Linear(32, 10)

        def forward(self, input):
            # Shape of input is (batch_size,1, 28, 28)
            # converting shape of input to (batch_size, 28, 28)
            # as required by RNN when batch_first is set True
            input = input.reshape(-1, 28, 28)
            output, hidden = self.rnn(input)  # noqa: RUF059 (as written)

            # RNN output shape is (seq_len, batch, input_size)
            # Get last output of RNN
            output = output[:, -1, :]
            output = self.batchnorm(output)
            output = self.dropout1(output)
            output = self.fc1(output)
            output = F.relu(output)
            output = self.dropout2(output)
            output = self.fc2(output)
            output = F.log_softmax(output, dim=1)
            return output

    return Net


def maker(dropout: bool):
    def make(lib):
        model = net_class(lib)()
        if not dropout:  # PyTorch draws other random numbers: compared without dropout
            model.dropout1.p = model.dropout2.p = 0.0
        model.train()
        optimizer = lib.optim.Adadelta(model.parameters(), lr=0.1)
        scheduler = lib.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
        return {"model": model, "optimizer": optimizer, "scheduler": scheduler}

    return make


def train_step(lib, state, data, target):
    """The body of train()'s loop over batches."""
    model, optimizer = state["model"], state["optimizer"]
    optimizer.zero_grad()
    output = model(data)
    loss = lib.nn.functional.nll_loss(output, target)
    loss.backward()
    optimizer.step()
    return loss


def run_epochs(lib, mode, batches, initial, epochs=3) -> Run:
    """main()'s loop: train() over the batches each epoch, then ``scheduler.step()`` (outside
    the compiled step, as the example calls it outside train())."""
    lib.manual_seed(0)
    state = maker(dropout=False)(lib)
    load_states(lib, state, initial)
    if mode == "module":
        state["model"] = tg.compile(state["model"])
    step = lambda *batch: train_step(lib, state, *batch)
    step = tg.compile(step) if mode == "step" else step
    losses = []
    for _ in range(epochs):
        losses += [loss_value(step(*as_batch(lib, batch))) for batch in batches]
        state["scheduler"].step()
    assert math.isclose(state["optimizer"].param_groups[0]["lr"], 0.1 * 0.7**epochs)
    return Run(losses, module_states(state))


def batches(count=4, size=8):
    rng = np.random.default_rng(0)
    return [
        (
            rng.normal(0.1307, 0.3081, (size, 1, 28, 28)).astype(np.float32),
            rng.integers(0, 10, size),
        )
        for _ in range(count)
    ]


def test_mnist_rnn():
    runs = run_port(maker(dropout=False), train_step, batches())
    states = runs["step"].states["model"]
    assert "rnn.weight_ih_l0" in states and "batchnorm.running_mean" in states
    assert not np.allclose(states["batchnorm.running_mean"], 0)  # updated by the compiled step


def test_mnist_rnn_epochs_with_step_lr():
    torch = import_torch()
    lib = torch if torch is not None else tg
    lib.manual_seed(0)
    initial = module_states(maker(dropout=False)(lib))
    data = batches(count=2)
    eager = run_epochs(tg, "eager", data, initial)
    for mode in MODES[1:]:
        assert_runs_close(run_epochs(tg, mode, data, initial), eager, 1e-5, 1e-6, mode)
    if torch is not None:
        assert_runs_close(eager, run_epochs(torch, "eager", data, initial), 1e-4, 1e-5, "torch")


def test_mnist_rnn_with_dropout_compiled_equals_eager():
    """As written, with Dropout2d drawing: the tracegrad runs agree under the same seed."""
    make = maker(dropout=True)
    tg.manual_seed(0)
    initial = module_states(make(tg))
    eager = run(tg, "eager", make, train_step, batches(), initial, seed=1)
    for mode in MODES[1:]:
        compiled = run(tg, mode, make, train_step, batches(), initial, seed=1)
        assert_runs_close(compiled, eager, 1e-5, 1e-6, f"{mode} vs eager")
