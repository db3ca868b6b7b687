"""Port of pytorch/examples word_language_model with ``--model Transformer``: its
``TransformerModel`` (a subclass of ``nn.Transformer`` keeping only the encoder) and
``PositionalEncoding`` from model.py, and main.py's training step (``model.zero_grad()``, NLL
loss, ``clip_grad_norm_``, then ``p.data.add_(p.grad, alpha=-lr)``, or AdamW with
``--use-optimizer``) and its ``evaluate()`` body, written once for ``lib`` with only the
import changed; sizes shrunk, tokens drawn from a NumPy generator and cut as ``batchify`` and
``get_batch`` cut them.

The Transformer's layers take their dropout from ``nn.Transformer``'s default (0.1: the
example passes its ``--dropout`` only to the positional encoding), so against PyTorch, whose
random draws differ, the model runs in ``eval()``; in training mode the tracegrad runs (eager,
compiled module, compiled step) are compared with each other under one seed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from harness import MODES, assert_runs_close, module_states, run, run_port

import tracegrad as tg

# PyTorch's note that its inference fast path needs batch_first
pytestmark = pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")

NTOKENS, EMSIZE, NHEAD, NHID, NLAYERS = 17, 16, 2, 24, 2
BATCH_SIZE, BPTT, LR, CLIP = 4, 6, 1.0, 0.25


def define(lib):
    """model.py's PositionalEncoding and TransformerModel, as written there."""
    torch, nn, F = lib, lib.nn, lib.nn.functional

    class PositionalEncoding(nn.Module):
        def __init__(self, d_model, dropout=0.1, max_len=5000):
            super().__init__()
            self.dropout = nn.Dropout(p=dropout)

            pe = torch.zeros(max_len, d_model)
            position = torch.arange(0, max_len, dtype=torch.float).unsqueeze(1)
            div_term = torch.exp(
                torch.arange(0, d_model, 2).float() * (-math.log(10000.0) / d_model)
            )
            pe[:, 0::2] = torch.sin(position * div_term)
            pe[:, 1::2] = torch.cos(position * div_term)
            pe = pe.unsqueeze(0).transpose(0, 1)
            self.register_buffer("pe", pe)

        def forward(self, x):
            x = x + self.pe[: x.size(0), :]
            return self.dropout(x)

    class TransformerModel(nn.Transformer):
        """Container module with an encoder, a recurrent or transformer module, and a decoder."""

        def __init__(self, ntoken, ninp, nhead, nhid, nlayers, dropout=0.5):
            super().__init__(
                d_model=ninp, nhead=nhead, dim_feedforward=nhid, num_encoder_layers=nlayers
            )
            self.model_type = "Transformer"
            self.src_mask = None
            self.pos_encoder = PositionalEncoding(ninp, dropout)

            self.input_emb = nn.Embedding(ntoken, ninp)
            self.ninp = ninp
            self.decoder = nn.Linear(ninp, ntoken)

            self.init_weights()

        def _generate_square_subsequent_mask(self, sz):
            return torch.log(torch.tril(torch.ones(sz, sz)))

        def init_weights(self):
            initrange = 0.1
            nn.init.uniform_(self.input_emb.weight, -initrange, initrange)
            nn.init.zeros_(self.decoder.bias)
            nn.init.uniform_(self.decoder.weight, -initrange, initrange)

        def forward(self, src, has_mask=True):
            if has_mask:
                device = src.device
                if self.src_mask is None or self.src_mask.size(0) != len(src):
                    mask = self._generate_square_subsequent_mask(len(src)).to(device)
                    self.src_mask = mask
            else:
                self.src_mask = None

            src = self.input_emb(src) * math.sqrt(self.ninp)
            src = self.pos_encoder(src)
            output = self.encoder(src, mask=self.src_mask)
            output = self.decoder(output)
            return F.log_softmax(output, dim=-1)

    return TransformerModel


def make_factory(training: bool, use_optimizer: bool):
    def make(lib):
        TransformerModel = define(lib)
        model = TransformerModel(NTOKENS, EMSIZE, NHEAD, NHID, NLAYERS, dropout=0.2)
        model.train(training)
        if use_optimizer:
            # The key projection's bias has no gradient in exact arithmetic (softmax ignores
            # a constant added to every score of a query): Adam's normalisation would turn
            # float32 rounding noise there into full steps that differ from run to run
            model.double()
        state = {"model": model, "criterion": lib.nn.NLLLoss()}
        if use_optimizer:
            state["optimizer"] = lib.optim.AdamW(model.parameters(), lr=1e-2)
        return state

    return make


def make_step(use_optimizer: bool):
    def step(lib, state, data, targets):
        """main.py's train() body for one batch of the Transformer model."""
        model, criterion = state["model"], state["criterion"]
        if use_optimizer:
            state["optimizer"].zero_grad()
        else:
            model.zero_grad()
        output = model(data)
        output = output.view(-1, NTOKENS)
        loss = criterion(output, targets)
        loss.backward()

        lib.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        if use_optimizer:
            state["optimizer"].step()
        else:
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-LR)
        return loss

    return step


def batches(count=4, seed=0):
    """Token ids cut as main.py's batchify (columns of the stream) and get_batch do."""
    stream = np.random.default_rng(seed).integers(0, NTOKENS, BATCH_SIZE * (BPTT * count + 1))
    source = stream.reshape(BATCH_SIZE, -1).T.copy()
    cut = []
    for i in range(0, BPTT * count, BPTT):
        seq_len = min(BPTT, len(source) - 1 - i)
        cut.append((source[i : i + seq_len], source[i + 1 : i + 1 + seq_len].reshape(-1)))
    return cut


def test_transformer_model_with_manual_sgd_agrees_with_torch_in_every_mode():
    runs = run_port(make_factory(False, False), make_step(False), batches()[:2] * 2)
    assert runs["eager"].losses[2] < runs["eager"].losses[0]  # the same batch, after training
    names = set(runs["eager"].states["model"])
    assert "encoder.layers.1.self_attn.in_proj_weight" in names and "decoder.weight" in names


def test_transformer_model_with_adamw_agrees_with_torch_in_every_mode():
    runs = run_port(make_factory(False, True), make_step(True), batches(seed=1)[:2] * 2)
    assert runs["eager"].losses[2] < runs["eager"].losses[0]


def test_training_mode_with_dropout_compiled_runs_equal_eager():
    make, step = make_factory(True, False), make_step(False)
    tg.manual_seed(0)
    initial = module_states(make(tg))
    runs = {mode: run(tg, mode, make, step, batches(), initial, 3) for mode in MODES}
    for mode in ("module", "step"):
        assert_runs_close(runs[mode], runs["eager"], 1e-5, 1e-6, f"{mode} vs eager")
    dropless = run(tg, "eager", make_factory(False, False), step, batches(), initial, 3)
    assert not np.allclose(runs["eager"].losses, dropless.losses)  # dropout did act


def evaluate_step(lib, state, data, targets):
    """main.py's evaluate() body for one batch: eval mode, no gradients."""
    model, criterion = state["model"], state["criterion"]
    model.eval()
    with lib.no_grad():
        output = model(data)
        output = output.view(-1, NTOKENS)
        return criterion(output, targets)


def test_evaluation_agrees_with_torch_in_every_mode():
    # run_port asserts the losses agree; evaluation changes no parameter
    runs = run_port(make_factory(True, False), evaluate_step, batches(seed=2))
    initial = run_port(make_factory(True, False), evaluate_step, [])["eager"].states
    for name, value in runs["step"].states["model"].items():
        np.testing.assert_array_equal(value, initial["model"][name], err_msg=name)
