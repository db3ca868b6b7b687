"""Port of pytorch/examples word_language_model: its RNNModel (model.py) with every recurrent
kind (RNN_TANH, RNN_RELU, LSTM, GRU) and tied weights, trained by main.py's train() loop
(hidden state carried from batch to batch and detached, NLLLoss, clip_grad_norm_, the manual
SGD update ``p.data.add_(p.grad, alpha=-lr)``) on batchified synthetic tokens."""

from __future__ import annotations

import numpy as np
import pytest
from harness import ADAM_TOLERANCES, MODES, assert_runs_close, module_states, run, run_port

import tracegrad as tg

NTOKEN, BSZ, BPTT, CLIP, LR = 20, 4, 5, 0.25, 5.0
KINDS = ["RNN_TANH", "RNN_RELU", "LSTM", "GRU"]


def rnn_model_class(lib):
    nn, F = lib.nn, lib.nn.functional

    class RNNModel(nn.Module):
        """Container module with an encoder, a recurrent module, and a decoder."""

        def __init__(self, rnn_type, ntoken, ninp, nhid, nlayers, dropout=0.5, tie_weights=False):
            super().__init__()
            self.ntoken = ntoken
            self.drop = nn.Dropout(dropout)
            self.encoder = nn.Embedding(ntoken, ninp)
            if rnn_type in ["LSTM", "GRU"]:
                self.rnn = getattr(nn, rnn_type)(ninp, nhid, nlayers, dropout=dropout)
            else:
                try:
                    nonlinearity = {"RNN_TANH": "tanh", "RNN_RELU": "relu"}[rnn_type]
                except KeyError as e:
                    raise ValueError(
                        """An invalid option for `--model` was supplied,
                                 options are ['LSTM', 'GRU', 'RNN_TANH' or 'RNN_RELU']"""
                    ) from e
                self.rnn = nn.RNN(ninp, nhid, nlayers, nonlinearity=nonlinearity, dropout=dropout)
            self.decoder = nn.Linear(nhid, ntoken)

            if tie_weights:
                if nhid != ninp:
                    raise ValueError("When using the tied flag, nhid must be equal to emsize")
                self.decoder.weight = self.encoder.weight

            self.init_weights()

            self.rnn_type = rnn_type
            self.nhid = nhid
            self.nlayers = nlayers

        def init_weights(self):
            initrange = 0.1
            nn.init.uniform_(self.encoder.weight, -initrange, initrange)
            nn.init.zeros_(self.decoder.bias)
            nn.init.uniform_(self.decoder.weight, -initrange, initrange)

        def forward(self, input, hidden):
            emb = self.drop(self.encoder(input))
            output, hidden = self.rnn(emb, hidden)
            output = self.drop(output)
            decoded = self.decoder(output)
            decoded = decoded.view(-1, self.ntoken)
            return F.log_softmax(decoded, dim=1), hidden

        def init_hidden(self, bsz):
            weight = next(self.parameters())
            if self.rnn_type == "LSTM":
                return (
                    weight.new_zeros(self.nlayers, bsz, self.nhid),
                    weight.new_zeros(self.nlayers, bsz, self.nhid),
                )
            else:
                return weight.new_zeros(self.nlayers, bsz, self.nhid)

    return RNNModel


def repackage_hidden(lib, h):
    """Wraps hidden states in new Tensors, to detach them from their history."""
    if isinstance(h, lib.Tensor):
        return h.detach()
    else:
        return tuple(repackage_hidden(lib, v) for v in h)


def carry_hidden(lib, carried, hidden):
    """Where main.py rebinds ``hidden`` for the next batch, the port writes the new state into
    the carried tensors: a compiled whole step replays tensor writes, but not a Python name or
    dict entry rebound to a tensor made inside the step."""
    for old, new in zip(flat_hidden(lib, carried), flat_hidden(lib, hidden), strict=True):
        old.copy_(new.detach())


def flat_hidden(lib, h):
    return [h] if isinstance(h, lib.Tensor) else list(h)


def maker(rnn_type, tied=False, dropout=0.0, use_optimizer=False):
    def make(lib):
        emsize = nhid = 8
        if not tied:
            nhid = 10
        model = rnn_model_class(lib)(rnn_type, NTOKEN, emsize, nhid, 2, dropout, tied)
        model.train()
        # train() starts every epoch from init_hidden; the port's batches are one epoch
        state = {"model": model, "criterion": lib.nn.NLLLoss(), "hidden": model.init_hidden(BSZ)}
        if use_optimizer:  # main.py --use-optimizer
            state["optimizer"] = lib.optim.AdamW(model.parameters(), lr=0.01)
        return state

    return make


def train_step(lib, state, data, targets):
    """The body of main.py's train() loop for one batch."""
    model, criterion, optimizer = state["model"], state["criterion"], state.get("optimizer")
    # Starting each batch, we detach the hidden state from how it was previously produced.
    if optimizer is not None:
        optimizer.zero_grad()
    else:
        model.zero_grad()
    hidden = repackage_hidden(lib, state["hidden"])
    output, hidden = model(data, hidden)
    loss = criterion(output, targets)
    loss.backward()

    # `clip_grad_norm` helps prevent the exploding gradient problem in RNNs / LSTMs.
    lib.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    if optimizer is not None:
        optimizer.step()
    else:
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-LR)
    carry_hidden(lib, state["hidden"], hidden)  # (after backward, which reads the old state)
    return loss


def fresh_state_step(lib, state, data, targets):
    state["hidden"] = state["model"].init_hidden(BSZ)
    return train_step(lib, state, data, targets)


def batchify(data, bsz):
    nbatch = len(data) // bsz
    return data[: nbatch * bsz].reshape(bsz, -1).T  # (steps, bsz), as data.py's batchify


def get_batch(source, i):
    seq_len = min(BPTT, len(source) - 1 - i)
    return source[i : i + seq_len], source[i + 1 : i + 1 + seq_len].reshape(-1)


def batches(count=4):
    # a repeating pattern with noise, so the loss has something to learn
    rng = np.random.default_rng(0)
    stream = (
        np.arange(count * BPTT * BSZ + BSZ) * 3 + rng.integers(0, 2, count * BPTT * BSZ + BSZ)
    ) % NTOKEN
    source = batchify(stream.astype(np.int64), BSZ)
    return [get_batch(source, i) for i in range(0, count * BPTT, BPTT)]


@pytest.mark.parametrize("rnn_type", KINDS)
def test_word_language_model(rnn_type):
    runs = run_port(maker(rnn_type), train_step, batches())
    # PyTorch's key names, and the carried hidden state is used: a fresh zero state at every
    # batch gives other losses
    assert "rnn.weight_hh_l1" in runs["step"].states["model"]
    fresh = run_port(maker(rnn_type), fresh_state_step, batches(), modes=())
    assert not np.allclose(fresh["eager"].losses[1:], runs["eager"].losses[1:], rtol=1e-4)


@pytest.mark.parametrize("rnn_type", ["LSTM", "RNN_TANH"])
def test_word_language_model_with_adamw(rnn_type):
    """main.py --use-optimizer: AdamW's state is carried by the compiled step too."""
    runs = run_port(maker(rnn_type, use_optimizer=True), train_step, batches(), **ADAM_TOLERANCES)
    manual = run_port(maker(rnn_type), train_step, batches(), modes=())
    assert not np.allclose(runs["step"].losses[1:], manual["eager"].losses[1:], rtol=1e-4)


@pytest.mark.parametrize("rnn_type", ["LSTM", "GRU"])
def test_word_language_model_tied_weights(rnn_type):
    runs = run_port(maker(rnn_type, tied=True), train_step, batches())
    for name, states in runs.items():
        model = states.states["model"]
        np.testing.assert_array_equal(model["encoder.weight"], model["decoder.weight"], name)


@pytest.mark.parametrize("rnn_type", ["LSTM", "RNN_RELU"])
def test_word_language_model_with_dropout_compiled_equals_eager(rnn_type):
    """Dropout in the embedding, between the recurrent layers and on the output: the draws
    differ from PyTorch's, so only the tracegrad runs are compared (same seed, same draws)."""
    make = maker(rnn_type, dropout=0.3)
    tg.manual_seed(0)
    initial = module_states(make(tg))
    eager = run(tg, "eager", make, train_step, batches(), initial, seed=1)
    for mode in MODES[1:]:
        compiled = run(tg, mode, make, train_step, batches(), initial, seed=1)
        assert_runs_close(compiled, eager, 1e-5, 1e-6, f"{mode} vs eager")
