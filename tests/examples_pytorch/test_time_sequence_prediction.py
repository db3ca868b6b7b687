"""Port of pytorch/examples time_sequence_prediction: its Sequence model (two LSTMCells and a
Linear, looped over the time steps in Python, then fed its own predictions for ``future``
steps) in float64, trained with LBFGS and a closure as train.py does, on sine waves made as
generate_sine_wave.py makes them (fewer and shorter).

LBFGS calls the closure many times per step with line-search logic in Python between calls,
so its step is not compiled whole; the compiled module runs inside the closure instead (the
harness's ``module`` mode)."""

from __future__ import annotations

import numpy as np
import pytest
from harness import run_port

import tracegrad as tg

FUTURE = 6


def sequence_class(lib):
    nn = lib.nn

    class Sequence(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm1 = nn.LSTMCell(1, 51)
            self.lstm2 = nn.LSTMCell(51, 51)
            self.linear = nn.Linear(51, 1)

        def forward(self, input, future=0):
            outputs = []
            h_t = lib.zeros(input.size(0), 51, dtype=lib.double)
            c_t = lib.zeros(input.size(0), 51, dtype=lib.double)
            h_t2 = lib.zeros(input.size(0), 51, dtype=lib.double)
            c_t2 = lib.zeros(input.size(0), 51, dtype=lib.double)

            for input_t in input.split(1, dim=1):
                h_t, c_t = self.lstm1(input_t, (h_t, c_t))
                h_t2, c_t2 = self.lstm2(h_t, (h_t2, c_t2))
                output = self.linear(h_t2)
                outputs += [output]
            for i in range(future):  # if we should predict the future
                h_t, c_t = self.lstm1(output, (h_t, c_t))
                h_t2, c_t2 = self.lstm2(h_t, (h_t2, c_t2))
                output = self.linear(h_t2)
                outputs += [output]
            outputs = lib.cat(outputs, dim=1)
            return outputs

    return Sequence


def sine_waves(n=5, length=9, period=3):
    """generate_sine_wave.py, smaller: n waves of ``length`` samples at random phases."""
    rng = np.random.default_rng(2)
    x = np.empty((n, length), "int64")
    x[:] = np.array(range(length)) + rng.integers(-4 * period, 4 * period, n).reshape(n, 1)
    return np.sin(x / 1.0 / period).astype("float64")


def make(lib):
    seq = sequence_class(lib)()
    seq.double()
    criterion = lib.nn.MSELoss()
    # use LBFGS as optimizer since we can load the whole data to train
    optimizer = lib.optim.LBFGS(seq.parameters(), lr=0.8)
    return {"seq": seq, "criterion": criterion, "optimizer": optimizer}


def train_step(lib, state, input, target):
    """One pass of train.py's loop (its prints left out)."""
    seq, criterion, optimizer = state["seq"], state["criterion"], state["optimizer"]

    def closure():
        optimizer.zero_grad()
        out = seq(input)
        loss = criterion(out, target)
        loss.backward()
        return loss

    return optimizer.step(closure)


def split(data):
    return data[3:, :-1], data[3:, 1:], data[:3, :-1], data[:3, 1:]


def predict(lib, state_dict, test_input, compiled=False):
    """train.py's prediction: the test waves, then FUTURE steps fed back, under no_grad."""
    seq = sequence_class(lib)().double()
    seq.load_state_dict({name: lib.tensor(array) for name, array in state_dict.items()})
    model = tg.compile(seq) if compiled else seq
    with lib.no_grad():
        return model(lib.tensor(test_input), future=FUTURE).numpy()


def test_time_sequence_prediction():
    input, target, test_input, test_target = split(sine_waves())
    runs = run_port(make, train_step, [(input, target)] * 2, modes=("module",))
    losses = runs["eager"].losses
    assert losses[-1] < 0.5 * losses[0]
    final = runs["eager"].states["seq"]
    pred = predict(tg, final, test_input)
    assert pred.shape == (3, test_input.shape[1] + FUTURE)
    np.testing.assert_allclose(predict(tg, final, test_input, compiled=True), pred, rtol=1e-10)
    test_loss = ((pred[:, :-FUTURE] - test_target) ** 2).mean()
    assert test_loss < losses[0]
    if "torch" in runs:
        import torch

        np.testing.assert_allclose(pred, predict(torch, final, test_input), rtol=1e-6, atol=1e-8)


def test_time_sequence_prediction_whole_step_says_to_compile_the_closure():
    input, target, _, _ = split(sine_waves())
    state = make(tg)
    step = tg.compile(lambda *batch: train_step(tg, state, *batch))
    with pytest.raises(tg.TraceError, match=r"LBFGS.step\(closure\) cannot be traced"):
        step(tg.tensor(input), tg.tensor(target))
