"""Port of karpathy/minGPT: mingpt/model.py's GPT (NewGELU, CausalSelfAttention, Block, GPT
with its initialisation and ``configure_optimizers``: AdamW with a weight-decay group of the
Linear weights and a no-decay group of biases, LayerNorm and Embedding weights) and the body
of mingpt/trainer.py's ``Trainer.run`` loop (forward with targets, ``zero_grad(set_to_none=
True)``, backward, ``clip_grad_norm_``, step), written once for ``lib`` with only the import
changed. A small config; token batches from a NumPy generator in place of the DataLoader.
Also ``GPT.generate`` (greedy, and sampled with ``do_sample``, ``temperature`` and ``top_k``),
run eagerly. Left out: ``from_pretrained`` (downloads GPT-2 weights).

The model runs in float64 (see ``make_factory``). Against PyTorch, whose random draws differ, the
dropout probabilities of the config are 0;
with minGPT's default 0.1 the tracegrad runs (eager, compiled module, compiled step) are
compared with each other under one seed.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from harness import (
    MODES,
    assert_runs_close,
    import_torch,
    load_states,
    module_states,
    run,
    run_port,
)

import tracegrad as tg

VOCAB, BLOCK, BATCH = 13, 8, 4


class CN:
    """mingpt.utils.CfgNode, the part the model and trainer use."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)

    def merge_from_dict(self, d):
        self.__dict__.update(d)


def define(lib):
    """model.py's classes, as written there (comments left out)."""
    torch, nn, F = lib, lib.nn, lib.nn.functional

    class NewGELU(nn.Module):
        def forward(self, x):
            return (
                0.5
                * x
                * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
            )

    class CausalSelfAttention(nn.Module):
        def __init__(self, config):
            super().__init__()
            assert config.n_embd % config.n_head == 0
            self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
            self.c_proj = nn.Linear(config.n_embd, config.n_embd)
            self.attn_dropout = nn.Dropout(config.attn_pdrop)
            self.resid_dropout = nn.Dropout(config.resid_pdrop)
            self.register_buffer(
                "bias",
                torch.tril(torch.ones(config.block_size, config.block_size)).view(
                    1, 1, config.block_size, config.block_size
                ),
            )
            self.n_head = config.n_head
            self.n_embd = config.n_embd

        def forward(self, x):
            B, T, C = x.size()
            q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
            k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
            att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
            att = F.softmax(att, dim=-1)
            att = self.attn_dropout(att)
            y = att @ v
            y = y.transpose(1, 2).contiguous().view(B, T, C)
            y = self.resid_dropout(self.c_proj(y))
            return y

    class Block(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.ln_1 = nn.LayerNorm(config.n_embd)
            self.attn = CausalSelfAttention(config)
            self.ln_2 = nn.LayerNorm(config.n_embd)
            self.mlp = nn.ModuleDict(
                dict(
                    c_fc=nn.Linear(config.n_embd, 4 * config.n_embd),
                    c_proj=nn.Linear(4 * config.n_embd, config.n_embd),
                    act=NewGELU(),
                    dropout=nn.Dropout(config.resid_pdrop),
                )
            )
            m = self.mlp
            self.mlpf = lambda x: m.dropout(m.c_proj(m.act(m.c_fc(x))))

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            x = x + self.mlpf(self.ln_2(x))
            return x

    class GPT(nn.Module):
        @staticmethod
        def get_default_config():
            C = CN()
            C.model_type = "gpt"
            C.n_layer = None
            C.n_head = None
            C.n_embd = None
            C.vocab_size = None
            C.block_size = None
            C.embd_pdrop = 0.1
            C.resid_pdrop = 0.1
            C.attn_pdrop = 0.1
            return C

        def __init__(self, config):
            super().__init__()
            assert config.vocab_size is not None
            assert config.block_size is not None
            self.block_size = config.block_size

            type_given = config.model_type is not None
            params_given = all(
                [config.n_layer is not None, config.n_head is not None, config.n_embd is not None]
            )
            assert type_given ^ params_given
            if type_given:
                config.merge_from_dict(
                    {
                        "gpt-micro": dict(n_layer=4, n_head=4, n_embd=128),
                        "gpt-nano": dict(n_layer=3, n_head=3, n_embd=48),
                    }[config.model_type]
                )

            self.transformer = nn.ModuleDict(
                dict(
                    wte=nn.Embedding(config.vocab_size, config.n_embd),
                    wpe=nn.Embedding(config.block_size, config.n_embd),
                    drop=nn.Dropout(config.embd_pdrop),
                    h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                    ln_f=nn.LayerNorm(config.n_embd),
                )
            )
            self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

            self.apply(self._init_weights)
            for pn, p in self.named_parameters():
                if pn.endswith("c_proj.weight"):
                    torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

            n_params = sum(p.numel() for p in self.transformer.parameters())
            print(f"number of parameters: {n_params / 1e6:.2f}M")

        def _init_weights(self, module):
            if isinstance(module, nn.Linear):
                torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
                if module.bias is not None:
                    torch.nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            elif isinstance(module, nn.LayerNorm):
                torch.nn.init.zeros_(module.bias)
                torch.nn.init.ones_(module.weight)

        def configure_optimizers(self, train_config):
            decay = set()
            no_decay = set()
            whitelist_weight_modules = (torch.nn.Linear,)
            blacklist_weight_modules = (torch.nn.LayerNorm, torch.nn.Embedding)
            for mn, m in self.named_modules():
                for pn, _p in m.named_parameters():
                    fpn = f"{mn}.{pn}" if mn else pn
                    if pn.endswith("bias"):
                        no_decay.add(fpn)
                    elif pn.endswith("weight") and isinstance(m, whitelist_weight_modules):
                        decay.add(fpn)
                    elif pn.endswith("weight") and isinstance(m, blacklist_weight_modules):
                        no_decay.add(fpn)

            param_dict = {pn: p for pn, p in self.named_parameters()}
            inter_params = decay & no_decay
            union_params = decay | no_decay
            assert len(inter_params) == 0
            assert len(param_dict.keys() - union_params) == 0

            optim_groups = [
                {
                    "params": [param_dict[pn] for pn in sorted(list(decay))],
                    "weight_decay": train_config.weight_decay,
                },
                {
                    "params": [param_dict[pn] for pn in sorted(list(no_decay))],
                    "weight_decay": 0.0,
                },
            ]
            optimizer = torch.optim.AdamW(
                optim_groups, lr=train_config.learning_rate, betas=train_config.betas
            )
            return optimizer

        def forward(self, idx, targets=None):
            device = idx.device
            _b, t = idx.size()
            assert t <= self.block_size, (
                f"Cannot forward sequence of length {t}, block size is only {self.block_size}"
            )
            pos = torch.arange(0, t, dtype=torch.long, device=device).unsqueeze(0)

            tok_emb = self.transformer.wte(idx)
            pos_emb = self.transformer.wpe(pos)
            x = self.transformer.drop(tok_emb + pos_emb)
            for block in self.transformer.h:
                x = block(x)
            x = self.transformer.ln_f(x)
            logits = self.lm_head(x)

            loss = None
            if targets is not None:
                loss = F.cross_entropy(
                    logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1
                )

            return logits, loss

        @torch.no_grad()
        def generate(self, idx, max_new_tokens, temperature=1.0, do_sample=False, top_k=None):
            for _ in range(max_new_tokens):
                idx_cond = idx if idx.size(1) <= self.block_size else idx[:, -self.block_size :]
                logits, _ = self(idx_cond)
                logits = logits[:, -1, :] / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, top_k)
                    logits[logits < v[:, [-1]]] = -float("Inf")
                probs = F.softmax(logits, dim=-1)
                if do_sample:
                    idx_next = torch.multinomial(probs, num_samples=1)
                else:
                    _, idx_next = torch.topk(probs, k=1, dim=-1)
                idx = torch.cat((idx, idx_next), dim=1)

            return idx

    return GPT


def trainer_config():
    """mingpt/trainer.py's defaults, with a learning rate for a few steps."""
    return CN(learning_rate=5e-3, betas=(0.9, 0.95), weight_decay=0.1, grad_norm_clip=1.0)


def make_factory(pdrop: float):
    def make(lib):
        GPT = define(lib)
        config = GPT.get_default_config()
        config.merge_from_dict(dict(model_type=None, n_layer=2, n_head=2, n_embd=16))
        config.merge_from_dict(dict(vocab_size=VOCAB, block_size=BLOCK))
        config.merge_from_dict(dict(embd_pdrop=pdrop, resid_pdrop=pdrop, attn_pdrop=pdrop))
        # In float64: the key projection's bias has no gradient in exact arithmetic (softmax
        # ignores a constant added to every score of a query), and AdamW's normalisation
        # turns float32 rounding noise there into full steps that differ from run to run
        model = GPT(config).double()
        return {"model": model, "optimizer": model.configure_optimizers(trainer_config())}

    return make


def step(lib, state, x, y):
    """The body of Trainer.run's loop for one batch."""
    model, config = state["model"], trainer_config()
    _logits, loss = model(x, y)
    model.zero_grad(set_to_none=True)
    loss.backward()
    lib.nn.utils.clip_grad_norm_(model.parameters(), config.grad_norm_clip)
    state["optimizer"].step()
    return loss


def batches(count=3, seed=0):
    """Sequences and their next tokens (-1, ignored by the loss, on some last positions)."""
    rng = np.random.default_rng(seed)
    cut = []
    for _ in range(count):
        tokens = rng.integers(0, VOCAB, (BATCH, BLOCK + 1))
        targets = tokens[:, 1:].copy()
        targets[0, -2:] = -1
        cut.append((tokens[:, :-1], targets))
    return cut


def test_gpt_and_trainer_loop_agree_with_torch_in_every_mode():
    data = batches()
    runs = run_port(make_factory(0.0), step, data + data[:1])
    eager = runs["eager"]
    assert eager.losses[-1] < eager.losses[0]  # the first batch again, after training
    names = set(eager.states["model"])
    assert {"transformer.h.1.attn.bias", "transformer.h.0.mlp.c_fc.weight"} <= names


def test_weight_decay_groups_are_minGPTs():
    tg.manual_seed(0)
    state = make_factory(0.0)(tg)
    decay, no_decay = state["optimizer"].param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in state["model"].named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    linear_weights = {
        f"{name}.weight"
        for name, m in state["model"].named_modules()
        if isinstance(m, tg.nn.Linear)
    }
    assert decayed == linear_weights and len(decayed) == 2 * 4 + 1  # 4 per block, lm_head
    assert len(no_decay["params"]) + len(decayed) == len(names)


def test_with_dropout_compiled_runs_equal_eager():
    make = make_factory(0.1)
    tg.manual_seed(0)
    initial = module_states(make(tg))
    runs = {mode: run(tg, mode, make, step, batches(), initial, 5) for mode in MODES}
    for mode in ("module", "step"):
        assert_runs_close(runs[mode], runs["eager"], 1e-5, 1e-6, f"{mode} vs eager")
    dropless = run(tg, "eager", make_factory(0.0), step, batches(), initial, 5)
    assert not np.allclose(runs["eager"].losses, dropless.losses)  # dropout did act


def trained_pair():
    """The model in tracegrad and in PyTorch (None without it) with the same weights, in eval
    mode, after a few training steps (so the next-token scores are not all alike)."""
    make = make_factory(0.0)
    tg.manual_seed(0)
    state = make(tg)
    for x, y in batches(4, seed=1):
        step(tg, state, tg.tensor(x), tg.tensor(y))
    weights = module_states(state)
    torch = import_torch()
    models = {"tg": state["model"].eval()}
    if torch is not None:
        theirs = make(torch)
        load_states(torch, theirs, weights)
        models["torch"] = theirs["model"].eval()
    return models


PROMPT = np.random.default_rng(3).integers(0, VOCAB, (3, 5))


def test_greedy_generate_matches_torch():
    models = trained_pair()
    if "torch" not in models:
        pytest.skip("PyTorch is not installed")
    torch = import_torch()
    # 6 new tokens after 5: the context is cropped to the block size (8) on the last steps
    ours = models["tg"].generate(tg.tensor(PROMPT), 6)
    theirs = models["torch"].generate(torch.tensor(PROMPT), 6)
    assert ours.dtype is tg.int64 and tuple(ours.shape) == (3, 11)
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    np.testing.assert_array_equal(ours.numpy()[:, :5], PROMPT)


def _each_among_top_k(lib, model, out, start: int, k: int) -> bool:
    """Whether every token from ``start`` on is among the ``k`` best next tokens of its prefix."""
    with lib.no_grad():
        for i in range(start, out.shape[1]):
            prefix = out[:, max(0, i - BLOCK) : i]
            best = model(prefix)[0][:, -1, :].topk(k).indices
            if not (best == out[:, i : i + 1]).any(1).all():
                return False
    return True


def test_sampled_generate_draws_among_the_top_k_from_the_seed():
    models = trained_pair()
    model, prompt = models["tg"], tg.tensor(PROMPT)
    greedy = model.generate(prompt, 6)
    assert model.generate(prompt, 6, do_sample=True, top_k=1).tolist() == greedy.tolist()
    draws = []
    for seed in (5, 5, 6):
        tg.manual_seed(seed)
        draws.append(model.generate(prompt, 6, temperature=0.8, do_sample=True, top_k=3))
    assert draws[0].tolist() == draws[1].tolist() != draws[2].tolist()
    assert draws[0].tolist() != greedy.tolist()
    assert all(_each_among_top_k(tg, model, out, 5, 3) for out in draws)
    assert not _each_among_top_k(tg, model, draws[0], 5, 1)  # not all the best: sampled
    if "torch" in models:  # the same code samples in PyTorch (its own draws)
        torch = import_torch()
        theirs = models["torch"].generate(torch.tensor(PROMPT), 6, do_sample=True, top_k=3)
        assert _each_among_top_k(torch, models["torch"], theirs, 5, 3)
