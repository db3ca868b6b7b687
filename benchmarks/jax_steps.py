"""The workloads written in JAX, the ``jax`` implementation (an optional comparator: the
``bench`` extra, ``pip install 'tracegrad[bench]'``).

Written as a JAX user writes them: pure functions of the parameters (a dict pytree under the
tracegrad model's names and layouts, so ``x @ w.T + b`` for ``nn.Linear``'s (out, in) weights,
``x @ w + b`` for W1X's (in, out) ones), ``jax.value_and_grad``, the optimizer written out
(SGD with momentum and weight decay, Adam, AdamW, gradient-norm clipping: PyTorch's update
rules, as ``tracegrad.optim``), and the whole training step under one ``jax.jit`` that donates
the parameters, the optimizer state and the batch-norm statistics. float32, from the same
initial weights and batches as every other implementation; W7's reparameterization noise is
drawn from tracegrad's generator as ``tg.randn_like`` draws it and passed in, as the
hand-written step draws it.

Importing this module imports JAX; ``start_cpu_client`` starts its CPU client with thread
pools of the benchmark's ``--threads`` size.
"""

# Shapes are named as in PyTorch's docs (B, T, C, H).
# ruff: noqa: N806

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

import benchmarks
from benchmarks import workloads as W
from tracegrad import random as tg_random

tree_map = jax.tree_util.tree_map

# The size of the CPU client's thread pools, once started here (None: started elsewhere first,
# so whatever XLA chose, or not started yet).
cpu_client_threads: int | None = None


def start_cpu_client(threads: int = benchmarks.THREADS) -> int | None:
    """Start JAX's CPU client with thread pools of ``threads`` threads; returns that size (None
    when the client was running already or the platform cannot restrict CPUs).

    XLA sizes its pools by the CPUs the starting thread may run on and has no flag for it (the
    YNNPACK fusions XLA emits for products and reductions use them whatever
    ``--xla_cpu_multi_thread_eigen`` says). So this thread is limited to ``threads`` CPUs while
    the client starts, and every thread started meanwhile gets all CPUs back: pools of
    ``threads`` threads, none pinned."""
    global cpu_client_threads
    from jax._src import xla_bridge  # (backends_are_initialized is not public)

    if xla_bridge.backends_are_initialized() or not hasattr(os, "sched_setaffinity"):
        return cpu_client_threads
    allowed = os.sched_getaffinity(0)
    before = set(os.listdir("/proc/self/task"))
    os.sched_setaffinity(0, sorted(allowed)[:threads])
    try:
        jax.devices("cpu")
    finally:
        os.sched_setaffinity(0, allowed)
        for tid in set(os.listdir("/proc/self/task")) - before:
            os.sched_setaffinity(int(tid), allowed)
    cpu_client_threads = min(threads, len(allowed))
    _warm_up()
    return cpu_client_threads


def _warm_up() -> None:
    """JAX's first jit in a process sets up its tracing and lowering machinery once; done
    here, so no workload's first call includes it (as none includes PyTorch's import)."""
    loss = jax.jit(jax.value_and_grad(lambda w, x: jnp.sum(jax.nn.relu(x @ w))))
    jax.block_until_ready(loss(jnp.ones((2, 2)), jnp.ones((2, 2))))


# --- layers -----------------------------------------------------------------------------------


def dense(x, w, b):
    """``F.linear``: ``w`` is (out, in)."""
    return x @ w.T + b


def linear(p, name, x):
    return dense(x, p[f"{name}.weight"], p[f"{name}.bias"])


def layer_norm(p, name, x, eps=1e-5):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / jnp.sqrt(var + eps) * p[f"{name}.weight"] + p[f"{name}.bias"]


# Convolutions run channels-last, as JAX users (and flax) write them and as XLA's CPU
# convolutions run fastest: images (N, H, W, C), kernels (H, W, I, O). The batches come
# channels-first (N, C, H, W), as every implementation sees them; each model turns its input.


def kernel_to_jax(w):
    """A convolution kernel from tracegrad's (O, I, H, W) to (H, W, I, O)."""
    return w.transpose(2, 3, 1, 0)


def kernel_from_jax(w):
    return w.transpose(3, 2, 0, 1)


def channels_last(x):
    return x.transpose(0, 2, 3, 1)


def conv2d(x, w, stride=1, padding=0):
    return jax.lax.conv_general_dilated(
        x, w, (stride, stride), [(padding, padding)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def max_pool2(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")


def batch_norm(p, stats, name, x, momentum=0.1, eps=1e-5):
    """Training-mode ``BatchNorm2d``: normalized by the batch's statistics; returns the output
    and the updated running mean and (unbiased) variance."""
    mean = x.mean((0, 1, 2))
    var = x.var((0, 1, 2))
    n = x.size // x.shape[-1]
    y = (x - mean) / jnp.sqrt(var + eps) * p[f"{name}.weight"] + p[f"{name}.bias"]
    mean_key, var_key = f"{name}.running_mean", f"{name}.running_var"
    running = {
        mean_key: (1 - momentum) * stats[mean_key] + momentum * mean,
        var_key: (1 - momentum) * stats[var_key] + momentum * var * (n / (n - 1)),
    }
    return y, jax.lax.stop_gradient(running)


def cross_entropy(logits, y):
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, y[:, None], axis=-1).mean()


def sequence_cross_entropy(logits, y):
    return cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


# --- models: (params, batch-norm statistics, x, noise, cfg) -> (outputs, statistics) -----------


def mlp_relu(p, x, cfg):
    return linear(p, "2", jax.nn.relu(linear(p, "0", x)))


def matmul_mlp(p, x, cfg):
    return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def functional_mlp(p, x, cfg):
    return dense(jax.nn.relu(dense(x, p["w1"], p["b1"])), p["w2"], p["b2"])


def mlp_gelu(p, x, cfg):
    h = jax.nn.gelu(linear(p, "0", x), approximate=True)
    h = jax.nn.gelu(linear(p, "2", h), approximate=True)
    return linear(p, "4", h)


def cnn(p, x, cfg):
    x = channels_last(x)
    for name in ("0", "2"):
        x = jax.nn.relu(conv2d(x, p[f"{name}.weight"]) + p[f"{name}.bias"])
    x = max_pool2(x).transpose(0, 3, 1, 2)  # flattened (C, H, W), as the linear layer's weight
    return linear(p, "6", x.reshape(x.shape[0], -1))


def attention(p, name, x, heads):
    B, T, C = x.shape
    q, k, v = (
        a.reshape(B, T, heads, C // heads).transpose(0, 2, 1, 3)
        for a in jnp.split(linear(p, f"{name}.qkv", x), 3, axis=-1)
    )
    scores = (q @ k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(C // heads))
    scores = jnp.where(jnp.tril(jnp.ones((T, T), bool)), scores, -jnp.inf)
    y = jax.nn.softmax(scores, axis=-1) @ v
    return linear(p, f"{name}.proj", y.transpose(0, 2, 1, 3).reshape(B, T, C))


def char_transformer(p, idx, cfg):
    x = p["tok.weight"][idx] + p["pos.weight"][: idx.shape[1]]
    for i in range(cfg["layers"]):
        block = f"blocks.{i}"
        x = x + attention(p, f"{block}.attn", layer_norm(p, f"{block}.ln1", x), cfg["heads"])
        h = jax.nn.gelu(linear(p, f"{block}.mlp.fc", layer_norm(p, f"{block}.ln2", x)), True)
        x = x + linear(p, f"{block}.mlp.proj", h)
    return linear(p, "head", layer_norm(p, "ln_f", x))


def lstm_layer(p, layer, x):
    """One ``nn.LSTM`` layer over time-major ``x`` (T, B, E): the input projection of every
    time step at once, then ``lax.scan`` over the steps (gates i, f, g, o)."""
    w_hh = p[f"rnn.weight_hh_l{layer}"]
    bias = p[f"rnn.bias_ih_l{layer}"] + p[f"rnn.bias_hh_l{layer}"]
    projected = x @ p[f"rnn.weight_ih_l{layer}"].T + bias

    def cell(carry, projected_t):
        h, c = carry
        i, f, g, o = jnp.split(projected_t + h @ w_hh.T, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h

    zeros = jnp.zeros((x.shape[1], w_hh.shape[1]), x.dtype)
    return jax.lax.scan(cell, (zeros, zeros), projected)[1]


def lstm_language_model(p, idx, cfg):
    x = p["encoder.weight"][idx]
    for layer in range(cfg["layers"]):
        x = lstm_layer(p, layer, x)
    return linear(p, "decoder", x)


def basic_block(p, stats, name, x, stride):
    out, s1 = batch_norm(p, stats, f"{name}.bn1", conv2d(x, p[f"{name}.conv1.weight"], stride, 1))
    out, s2 = batch_norm(
        p, stats, f"{name}.bn2", conv2d(jax.nn.relu(out), p[f"{name}.conv2.weight"], 1, 1)
    )
    running = {**s1, **s2}
    if f"{name}.shortcut.0.weight" in p:
        shortcut = conv2d(x, p[f"{name}.shortcut.0.weight"], stride)
        x, s3 = batch_norm(p, stats, f"{name}.shortcut.1", shortcut)
        running.update(s3)
    return jax.nn.relu(out + x), running


def resnet(p, stats, x, cfg):
    out, running = batch_norm(p, stats, "bn1", conv2d(channels_last(x), p["conv1.weight"], 1, 1))
    out = jax.nn.relu(out)
    for i, stride in enumerate(cfg["strides"]):
        out, block_running = basic_block(p, stats, f"layers.{i}", out, stride)
        running.update(block_running)
    return linear(p, "linear", out.mean((1, 2))), running


def resnet_statistics(params, cfg) -> dict:
    """Fresh running statistics (mean 0, variance 1) of ``resnet``'s batch norms."""
    layers = ["bn1"]
    for i in range(len(cfg["strides"])):
        layers += [f"layers.{i}.bn1", f"layers.{i}.bn2"]
        if f"layers.{i}.shortcut.1.weight" in params:
            layers.append(f"layers.{i}.shortcut.1")
    stats = {}
    for layer in layers:
        width = params[f"{layer}.weight"].shape
        stats[f"{layer}.running_mean"] = jnp.zeros(width, jnp.float32)
        stats[f"{layer}.running_var"] = jnp.ones(width, jnp.float32)
    return stats


def vae_loss(p, x, noise):
    """PyTorch's examples/vae: BCE (sum, each log clamped at -100 as PyTorch's) plus the KL
    divergence; ``noise`` is the reparameterization's standard normal sample."""
    x = x.reshape(x.shape[0], -1)
    h1 = jax.nn.relu(linear(p, "fc1", x))
    mu, logvar = linear(p, "fc21", h1), linear(p, "fc22", h1)
    z = mu + noise * jnp.exp(0.5 * logvar)
    recon = jax.nn.sigmoid(linear(p, "fc4", jax.nn.relu(linear(p, "fc3", z))))
    log_r = jnp.maximum(jnp.log(recon), -100.0)
    log_1mr = jnp.maximum(jnp.log(1 - recon), -100.0)
    bce = -jnp.sum(x * log_r + (1 - x) * log_1mr)
    return bce - 0.5 * jnp.sum(1 + logvar - mu**2 - jnp.exp(logvar))


# --- losses: (params, statistics, x, y, noise, cfg) -> (loss, statistics) --------------------


def model_loss(model: Callable, loss=cross_entropy) -> Callable:
    """The loss of a model without batch-norm statistics or noise."""
    return lambda p, stats, x, y, noise, cfg: (loss(model(p, x, cfg), y), stats)


def resnet_loss(p, stats, x, y, noise, cfg):
    logits, stats = resnet(p, stats, x, cfg)
    return cross_entropy(logits, y), stats


def vae_step_loss(p, stats, x, y, noise, cfg):
    return vae_loss(p, x, noise), stats


# --- optimizers: cfg -> (init(params) -> state, update(params, grads, state) -> both) -------


def sgd(cfg):
    """SGD with momentum and (L2) weight decay, as ``torch.optim.SGD``."""
    lr, momentum, decay = cfg["lr"], cfg.get("momentum", 0.0), cfg.get("weight_decay", 0.0)

    def init(params):
        return {"momentum_buffer": tree_map(jnp.zeros_like, params)} if momentum else {}

    def update(params, grads, state):
        if decay:
            grads = tree_map(lambda g, w: g + decay * w, grads, params)
        if momentum:  # (the first step's buffer is the gradient itself, as PyTorch's)
            grads = tree_map(lambda b, g: momentum * b + g, state["momentum_buffer"], grads)
            state = {"momentum_buffer": grads}
        return tree_map(lambda w, g: w - lr * g, params, grads), state

    return init, update


def adam(cfg, decoupled_weight_decay=0.0, b1=0.9, b2=0.999, eps=1e-8):
    """Adam (AdamW with ``decoupled_weight_decay``), PyTorch's update."""
    lr = cfg["lr"]

    def init(params):
        zeros = functools.partial(tree_map, jnp.zeros_like, params)  # (two: both are donated)
        return {"step": jnp.zeros((), jnp.float32), "exp_avg": zeros(), "exp_avg_sq": zeros()}

    def update(params, grads, state):
        t = state["step"] + 1
        m = tree_map(lambda m, g: b1 * m + (1 - b1) * g, state["exp_avg"], grads)
        v = tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, state["exp_avg_sq"], grads)
        step_size, root_bc2 = lr / (1 - b1**t), jnp.sqrt(1 - b2**t)

        def new(w, m, v):
            w = w * (1 - lr * decoupled_weight_decay)
            return w - step_size * m / (jnp.sqrt(v) / root_bc2 + eps)

        return tree_map(new, params, m, v), {"step": t, "exp_avg": m, "exp_avg_sq": v}

    return init, update


def adamw(cfg):
    return adam(cfg, decoupled_weight_decay=cfg["weight_decay"])


def clip_grad_norm(grads, max_norm):
    """``clip_grad_norm_``: scale by min(1, max_norm / (total 2-norm + 1e-6))."""
    norm = jnp.sqrt(sum(jnp.sum(g * g) for g in jax.tree_util.tree_leaves(grads)))
    coef = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return tree_map(lambda g: g * coef, grads)


@dataclass(frozen=True)
class JaxWorkload:
    loss: Callable  # (params, statistics, x, y, noise, cfg) -> (loss, statistics)
    optimizer: Callable  # cfg -> (init, update)
    statistics: Callable = lambda params, cfg: {}  # initial batch-norm running statistics
    noise_shape: Callable | None = None  # cfg -> shape of the step's standard normal noise


JAX_WORKLOADS = {
    "W1": JaxWorkload(model_loss(mlp_relu), sgd),
    "W1X": JaxWorkload(model_loss(matmul_mlp), sgd),
    "W1F": JaxWorkload(model_loss(functional_mlp), sgd),
    "W2": JaxWorkload(model_loss(mlp_gelu), adam),
    "W3": JaxWorkload(model_loss(cnn), sgd),
    "W4": JaxWorkload(model_loss(char_transformer, sequence_cross_entropy), adamw),
    "W5": JaxWorkload(model_loss(lstm_language_model, sequence_cross_entropy), sgd),
    "W6": JaxWorkload(resnet_loss, sgd, statistics=resnet_statistics),
    "W7": JaxWorkload(vae_step_loss, adam, noise_shape=lambda cfg: (cfg["batch"], cfg["latent"])),
}


def make_train_step(spec: JaxWorkload, cfg: dict) -> tuple[Callable, Callable]:
    """The optimizer's ``init`` and the jitted whole step ``(params, optimizer state,
    statistics, x, y, noise) -> (params, optimizer state, statistics, loss)``, donating the
    first three. A new function each call, so nothing is reused from JAX's compile caches."""
    opt_init, opt_update = spec.optimizer(cfg)
    grad_fn = jax.value_and_grad(functools.partial(spec.loss, cfg=cfg), has_aux=True)
    clip = cfg.get("clip")

    def train_step(params, opt_state, stats, x, y, noise):
        (loss, stats), grads = grad_fn(params, stats, x, y, noise)
        if clip:
            grads = clip_grad_norm(grads, clip)
        params, opt_state = opt_update(params, grads, opt_state)
        return params, opt_state, stats, loss

    return opt_init, jax.jit(train_step, donate_argnums=(0, 1, 2))


class JaxImplementation(W.Implementation):
    """``step(i)`` calls the jitted step and waits for all its results (JAX dispatches
    asynchronously): the first call includes tracing, XLA's compile and the first step."""

    key = "jax"

    def __init__(self, setup: W.Setup):
        if setup.dtype != np.float32:
            raise ValueError(f"the jax step runs in float32, not {np.dtype(setup.dtype).name}")
        start_cpu_client()
        wl, self.cfg = setup.workload, setup.workload.config
        spec = JAX_WORKLOADS[wl.name]
        opt_init, self.train_step = make_train_step(spec, self.cfg)
        self.params = {k: jnp.array(_turn_kernels(v, kernel_to_jax)) for k, v in setup.init.items()}
        self.opt_state = opt_init(self.params)
        self.stats = spec.statistics(self.params, self.cfg)
        self.noise_shape = spec.noise_shape(self.cfg) if spec.noise_shape else None
        self.batches = [(jnp.array(x), jnp.array(_int32(y))) for x, y in setup.batches]

    def step(self, i: int):
        x, y = self.batches[i % len(self.batches)]
        noise = None
        if self.noise_shape is not None:  # drawn as tg.randn_like draws
            noise = jnp.array(tg_random.generator().standard_normal(self.noise_shape), jnp.float32)
        results = self.train_step(self.params, self.opt_state, self.stats, x, y, noise)
        self.params, self.opt_state, self.stats, loss = jax.block_until_ready(results)
        return loss

    def parameters(self) -> dict[str, np.ndarray]:
        return {k: _turn_kernels(np.asarray(v), kernel_from_jax) for k, v in self.params.items()}

    def running_statistics(self) -> dict[str, np.ndarray]:
        return {k: np.array(v) for k, v in self.stats.items()}


def _turn_kernels(value: np.ndarray, turn: Callable) -> np.ndarray:
    """A copy of ``value``, turned by ``turn`` if it is a convolution kernel (4-D). (Always a
    copy: an array read from a donated JAX buffer must not outlive it.)"""
    return np.array(turn(value) if value.ndim == 4 else value, order="C")


def _int32(a: np.ndarray) -> np.ndarray:
    """Labels and tokens as int32 (JAX's integers without x64)."""
    return a.astype(np.int32) if a.dtype.kind in "iu" else a
