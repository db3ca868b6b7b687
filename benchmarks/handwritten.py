"""Hand-written NumPy training steps for W1-W7: the practical limit the compiler is measured
against.

Each class computes exactly the math of the tracegrad model of the same workload (same initial
weights, same loss, same optimizer update rule as ``tracegrad.optim``), written the way a careful
NumPy programmer would:

- every array the step needs is allocated once, in ``__init__``; the step itself only calls
  ufuncs and ``np.matmul`` with ``out=`` (a few row-sized temporaries aside);
- all parameters are views into ONE flat float32 buffer and all gradients into another, so the
  optimizer update is a handful of ufunc calls over flat arrays, done in cache-sized chunks
  (every pass of a chunk hits cache instead of streaming the whole model from memory);
- layouts are chosen for the step, not for the model: the CNN keeps its activations
  channel-major (C, B, H, W) so im2col, col2im and every convolution matmul work on contiguous
  rows; the attention scores are kept keys-major and the logits class-major, so the softmax
  reductions run down columns (vectorized) instead of along short rows;
- numerically stable softmax cross-entropy, closed-form layer-norm backward, softmax-attention
  backward, GELU(tanh) forward and backward from one saved ``tanh``.

``step(x, y)`` runs one training step (forward, backward, update) and returns the loss computed
before the update, as a Python float. ``parameters()`` returns the current weights in the
tracegrad model's names and layouts (for checking against the other implementations).
"""

# Shapes are named as in PyTorch's docs (B, T, C, H, N, V; P for the parameters).
# ruff: noqa: N803, N806

from __future__ import annotations

import math

import numpy as np

F32 = np.float32
ALIGN = 16  # parameters start at multiples of 16 floats (64 bytes) inside the flat buffer
CHUNK = 65536  # floats per optimizer chunk: the working set of one chunk stays in cache

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_K = 0.044715


# --- parameters and optimizers on one flat buffer -------------------------------------------------


class FlatParams:
    """Parameters (and their gradients) as views into one flat float32 buffer each."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        sizes = {name: int(a.size) for name, a in arrays.items()}
        offsets, total = {}, 0
        for name, n in sizes.items():
            offsets[name] = total
            total += -(-n // ALIGN) * ALIGN
        dtype = next(iter(arrays.values())).dtype  # float32 (float64 in exactness tests)
        self.flat = np.zeros(total, dtype)
        self.grad_flat = np.zeros(total, dtype)
        self.p: dict[str, np.ndarray] = {}
        self.g: dict[str, np.ndarray] = {}
        for name, a in arrays.items():
            start, stop = offsets[name], offsets[name] + sizes[name]
            self.p[name] = self.flat[start:stop].reshape(a.shape)
            self.g[name] = self.grad_flat[start:stop].reshape(a.shape)
            self.p[name][...] = a
        self.size = total

    def chunks(self, *flats: np.ndarray) -> list[tuple[np.ndarray, ...]]:
        """The given flat arrays cut into matching cache-sized pieces (views made once)."""
        return [tuple(f[s : s + CHUNK] for f in flats) for s in range(0, self.size, CHUNK)]


class SGD:
    """``p -= lr * g``, or with momentum ``buf = m * buf + g`` (``buf = g`` at first); with
    ``weight_decay`` the gradient is ``g + wd * p`` first (PyTorch's SGD)."""

    def __init__(
        self, params: FlatParams, lr: float, momentum: float = 0.0, weight_decay: float = 0.0
    ):
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.buf = np.zeros_like(params.flat) if momentum else None
        self.tmp = np.empty(min(CHUNK, params.size), params.flat.dtype) if weight_decay else None
        self.first = True
        flats = (params.flat, params.grad_flat) + ((self.buf,) if momentum else ())
        self.pieces = params.chunks(*flats)

    def step(self) -> None:
        lr, momentum, wd = self.lr, self.momentum, self.weight_decay
        for piece in self.pieces:
            p, g = piece[:2]
            if wd:
                tmp = self.tmp[: p.size]
                np.multiply(p, wd, out=tmp)
                np.add(g, tmp, out=g)
            if momentum:
                buf = piece[2]
                if self.first:
                    np.copyto(buf, g)
                else:
                    np.multiply(buf, momentum, out=buf)
                    np.add(buf, g, out=buf)
                np.multiply(buf, lr, out=g)  # the gradient buffer is free now: reuse it
            else:
                np.multiply(g, lr, out=g)
            np.subtract(p, g, out=p)
        self.first = False


def clip_grad_norm(params: FlatParams, max_norm: float) -> None:
    """Scale all gradients by min(1, max_norm / (norm + 1e-6)), as ``clip_grad_norm_``: the
    total 2-norm is one BLAS dot product over the flat gradient buffer (its padding is zero)."""
    g = params.grad_flat
    norm = math.sqrt(float(np.dot(g, g)))
    coef = min(1.0, max_norm / (norm + 1e-6))
    if coef < 1.0:
        np.multiply(g, g.dtype.type(coef), out=g)


class Adam:
    """Adam (AdamW with ``decoupled=True``), PyTorch's update:

    m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
    p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)

    with the step size folded into the denominator (one pass fewer), all in place, chunked.
    """

    def __init__(
        self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False
    ):
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.weight_decay, self.decoupled = weight_decay, decoupled
        self.m = np.zeros_like(params.flat)
        self.v = np.zeros_like(params.flat)
        self.tmp = np.empty_like(params.flat)
        self.t = 0
        self.pieces = params.chunks(params.flat, params.grad_flat, self.m, self.v, self.tmp)

    def step(self) -> None:
        self.t += 1
        lr, b1, b2, eps, wd = self.lr, self.b1, self.b2, self.eps, self.weight_decay
        step_size = lr / (1.0 - b1**self.t)
        scale = 1.0 / (math.sqrt(1.0 - b2**self.t) * step_size)
        eps_scaled = eps / step_size
        decay = 1.0 - lr * wd
        for p, g, m, v, tmp in self.pieces:
            if wd and self.decoupled:
                np.multiply(p, decay, out=p)
            elif wd:
                np.multiply(p, wd, out=tmp)
                np.add(g, tmp, out=g)
            np.multiply(m, b1, out=m)
            np.multiply(g, 1.0 - b1, out=tmp)
            np.add(m, tmp, out=m)
            np.multiply(v, b2, out=v)
            np.multiply(g, g, out=tmp)
            np.multiply(tmp, 1.0 - b2, out=tmp)
            np.add(v, tmp, out=v)
            np.sqrt(v, out=tmp)
            np.multiply(tmp, scale, out=tmp)
            np.add(tmp, eps_scaled, out=tmp)
            np.divide(m, tmp, out=tmp)
            np.subtract(p, tmp, out=p)


# --- shared kernels ---------------------------------------------------------------------------


class LinearCrossEntropy:
    """The last linear layer and the mean softmax cross-entropy, forward and backward.

    Computed class-major: logits^T (C, N) = W @ h^T, so the per-sample max and sum over the
    classes run down the columns, vectorized along the samples (a reduction along a short last
    axis is several times slower in NumPy). One (C, N) buffer holds the logits, then the
    shifted logits, their exponentials, and finally the gradient.
    """

    def __init__(self, n: int, c: int, dtype=F32):
        self.n = n
        self.cols = np.arange(n)
        self.flat_index = np.empty(n, np.int64)
        self.buf = np.empty((c, n), dtype)
        self.mx = np.empty((1, n), dtype)
        self.s = np.empty(n, dtype)
        self.log_s = np.empty(n, dtype)
        self.picked = np.empty(n, dtype)
        self.ones_c = np.ones(c, dtype)

    def __call__(self, h, w, b, y, dw, db, dh, ones_n) -> float:
        """Loss of ``h @ w.T + b`` against ``y``; gradients into dw, db and dh (if not None)."""
        n, z, s = self.n, self.buf, self.s
        np.matmul(w, h.T, out=z)
        np.add(z, b[:, None], out=z)
        np.max(z, axis=0, keepdims=True, out=self.mx)
        np.subtract(z, self.mx, out=z)
        np.multiply(y, n, out=self.flat_index)  # z[y[i], i] is z.flat[y[i] * n + i]
        np.add(self.flat_index, self.cols, out=self.flat_index)
        np.take(z.ravel(), self.flat_index, out=self.picked)
        np.exp(z, out=z)
        np.matmul(self.ones_c, z, out=s)
        np.log(s, out=self.log_s)
        dtype = z.dtype.type
        loss = (self.log_s.sum(dtype=dtype) - self.picked.sum(dtype=dtype)) / dtype(n)
        # d loss / d logits = (softmax - onehot) / n, with 1/n folded into the normalizer
        np.multiply(s, n, out=s)
        np.divide(z, s, out=z)
        z[y, self.cols] -= dtype(1.0 / n)
        np.matmul(z, h, out=dw)
        np.matmul(z, ones_n, out=db)
        if dh is not None:
            np.matmul(z.T, w, out=dh)
        return float(loss)


def linear_forward(x, w, b, out):
    """out = x @ w.T + b"""
    np.matmul(x, w.T, out=out)
    np.add(out, b, out=out)


def linear_backward_params(dout, x, dw, db, ones):
    """dw = dout.T @ x; db = sum over rows of dout (as a BLAS matrix-vector product)."""
    np.matmul(dout.T, x, out=dw)
    np.matmul(ones, dout, out=db)


class GELUTanh:
    """gelu(z) = 0.5 z (1 + t), t = tanh(c (z + k z^3)): the forward saves t for the backward."""

    def __init__(self, shape):
        self.t = np.empty(shape, F32)
        self.tmp = np.empty(shape, F32)
        self.tmp2 = np.empty(shape, F32)

    def forward(self, z, out):
        t, tmp = self.t, self.tmp
        np.multiply(z, z, out=tmp)
        np.multiply(tmp, SQRT_2_OVER_PI * GELU_K, out=tmp)
        np.add(tmp, SQRT_2_OVER_PI, out=tmp)
        np.multiply(tmp, z, out=tmp)
        np.tanh(tmp, out=t)
        np.add(t, 1.0, out=out)
        np.multiply(out, z, out=out)
        np.multiply(out, 0.5, out=out)

    def backward(self, g, z, dz):
        """dz = g * gelu'(z); ``dz`` may be ``g``. With q = 0.5 z c (1 + 3 k z^2):
        gelu'(z) = 0.5 (1 + t) + (1 - t^2) q = (1 + t) (0.5 + (1 - t) q)."""
        t, tmp, tmp2 = self.t, self.tmp, self.tmp2
        np.multiply(z, z, out=tmp)
        np.multiply(tmp, 1.5 * SQRT_2_OVER_PI * GELU_K, out=tmp)
        np.add(tmp, 0.5 * SQRT_2_OVER_PI, out=tmp)
        np.multiply(tmp, z, out=tmp)
        np.subtract(1.0, t, out=tmp2)
        np.multiply(tmp, tmp2, out=tmp)
        np.add(tmp, 0.5, out=tmp)
        np.add(t, 1.0, out=tmp2)
        np.multiply(tmp, tmp2, out=tmp)
        np.multiply(g, tmp, out=dz)


class LayerNorm:
    """Layer norm over the last dim of (N, C) rows: forward saves xhat and 1/std; the backward
    is the closed form dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
    Row means are matrix-vector products with a vector of 1/C (BLAS is several times faster
    than a NumPy reduction along a short last axis)."""

    def __init__(self, n: int, c: int, eps: float = 1e-5):
        self.eps = eps
        self.inv_c = np.full(c, 1.0 / c, F32)
        self.xhat = np.empty((n, c), F32)
        self.rstd = np.empty(n, F32)
        self.tmp = np.empty((n, c), F32)
        self.dxhat = np.empty((n, c), F32)
        self.a = np.empty(n, F32)
        self.b = np.empty(n, F32)

    def forward(self, x, w, b, out):
        xhat, rstd, tmp, a = self.xhat, self.rstd, self.tmp, self.a
        np.matmul(x, self.inv_c, out=a)
        np.subtract(x, a[:, None], out=xhat)
        np.multiply(xhat, xhat, out=tmp)
        np.matmul(tmp, self.inv_c, out=rstd)
        np.add(rstd, self.eps, out=rstd)
        np.sqrt(rstd, out=rstd)
        np.divide(1.0, rstd, out=rstd)
        np.multiply(xhat, rstd[:, None], out=xhat)
        np.multiply(xhat, w, out=out)
        np.add(out, b, out=out)

    def backward(self, dout, w, dw, db, ones, dx_acc):
        """Gradients of w and b into dw, db; the input gradient is ADDED into ``dx_acc``."""
        xhat, tmp, dxhat, a, b = self.xhat, self.tmp, self.dxhat, self.a, self.b
        np.multiply(dout, xhat, out=tmp)
        np.matmul(ones, tmp, out=dw)
        np.matmul(ones, dout, out=db)
        np.multiply(dout, w, out=dxhat)
        np.matmul(dxhat, self.inv_c, out=a)
        np.multiply(dxhat, xhat, out=tmp)
        np.matmul(tmp, self.inv_c, out=b)
        np.multiply(xhat, b[:, None], out=tmp)
        np.subtract(dxhat, tmp, out=dxhat)
        np.subtract(dxhat, a[:, None], out=dxhat)
        np.multiply(dxhat, self.rstd[:, None], out=dxhat)
        np.add(dx_acc, dxhat, out=dx_acc)


# --- W1: MLP 784-128-10, ReLU, SGD ----------------------------------------------------------------


class MLPReLUSGD:
    """Linear(784, 128) - ReLU - Linear(128, 10), mean cross-entropy, SGD."""

    def __init__(self, init: dict[str, np.ndarray], batch: int, lr: float):
        self.params = P = FlatParams(init)
        self.w1, self.b1, self.w2, self.b2 = (
            P.p[k] for k in ("0.weight", "0.bias", "2.weight", "2.bias")
        )
        self.dw1, self.db1, self.dw2, self.db2 = (
            P.g[k] for k in ("0.weight", "0.bias", "2.weight", "2.bias")
        )
        hidden, classes = self.w1.shape[0], self.w2.shape[0]
        self.h = np.empty((batch, hidden), F32)
        self.mask = np.empty((batch, hidden), bool)
        self.dh = np.empty((batch, hidden), F32)
        self.ones = np.ones(batch, F32)
        self.head = LinearCrossEntropy(batch, classes)
        self.opt = SGD(P, lr)

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        h, dh, ones = self.h, self.dh, self.ones
        linear_forward(x, self.w1, self.b1, h)
        np.maximum(h, 0.0, out=h)
        loss = self.head(h, self.w2, self.b2, y, self.dw2, self.db2, dh, ones)
        np.greater(h, 0.0, out=self.mask)
        np.multiply(dh, self.mask, out=dh)
        linear_backward_params(dh, x, self.dw1, self.db1, ones)
        self.opt.step()
        return loss

    def parameters(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.params.p.items()}


# --- W2: MLP 1024-2048-2048-10, GELU(tanh), Adam ------------------------------------------------


class MLPGELUAdam:
    """Linear - GELU(tanh) - Linear - GELU(tanh) - Linear, mean cross-entropy, Adam."""

    def __init__(self, init: dict[str, np.ndarray], batch: int, lr: float):
        self.params = P = FlatParams(init)
        names = [k[: -len(".weight")] for k in init if k.endswith(".weight")]
        layers = [
            (P.p[f"{n}.weight"], P.p[f"{n}.bias"], P.g[f"{n}.weight"], P.g[f"{n}.bias"])
            for n in names
        ]
        self.hidden, self.last = layers[:-1], layers[-1]
        widths = [w.shape[0] for w, *_ in self.hidden]
        self.z = [np.empty((batch, d), F32) for d in widths]  # pre-activations
        self.a = [np.empty((batch, d), F32) for d in widths]  # activations
        self.dz = [np.empty((batch, d), F32) for d in widths]
        self.gelu = [GELUTanh((batch, d)) for d in widths]
        self.ones = np.ones(batch, F32)
        self.head = LinearCrossEntropy(batch, self.last[0].shape[0])
        self.opt = Adam(P, lr=lr)

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        inp = x
        for i, (w, b, _, _) in enumerate(self.hidden):
            linear_forward(inp, w, b, self.z[i])
            self.gelu[i].forward(self.z[i], self.a[i])
            inp = self.a[i]
        w, b, dw, db = self.last
        loss = self.head(inp, w, b, y, dw, db, self.dz[-1], self.ones)
        for i in range(len(self.hidden) - 1, -1, -1):
            w, _, dw, db = self.hidden[i]
            dz = self.dz[i]
            self.gelu[i].backward(dz, self.z[i], dz)
            linear_backward_params(dz, self.a[i - 1] if i else x, dw, db, self.ones)
            if i:
                np.matmul(dz, w, out=self.dz[i - 1])
        self.opt.step()
        return loss

    def parameters(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.params.p.items()}


# --- W3: CNN conv(1->8,3)-relu-conv(8->16,3)-relu-maxpool2-linear, SGD momentum ------------------


def im2col(src: np.ndarray, cols: np.ndarray) -> None:
    """src (C, B, H, W) -> cols (C, k, k, B, OH, OW): one row-contiguous copy per kernel tap."""
    k, oh, ow = cols.shape[1], cols.shape[4], cols.shape[5]
    for i in range(k):
        for j in range(k):
            np.copyto(cols[:, i, j], src[:, :, i : i + oh, j : j + ow])


def col2im(cols: np.ndarray, dst: np.ndarray) -> None:
    """The transpose of ``im2col``: dst (C, B, H, W) = sum of the windows put back in place."""
    k, oh, ow = cols.shape[1], cols.shape[4], cols.shape[5]
    dst.fill(0.0)
    for i in range(k):
        for j in range(k):
            target = dst[:, :, i : i + oh, j : j + ow]
            np.add(target, cols[:, i, j], out=target)


class CNNSGDMomentum:
    """Conv2d(1, 8, 3) - ReLU - Conv2d(8, 16, 3) - ReLU - MaxPool2d(2) - Flatten - Linear.

    Activations are kept channel-major, (C, B, H, W): each convolution is then im2col (nine
    row-contiguous copies) and ONE matmul ``W (Cout, Cin*k*k) @ cols (Cin*k*k, B*H*W)`` with the
    weights in their own layout, its input gradient one matmul and nine row-contiguous adds.
    Only the pooled activations are transposed, once, to (B, C*H*W) for the linear layer.
    """

    NAMES = ("0.weight", "0.bias", "2.weight", "2.bias", "6.weight", "6.bias")

    def __init__(self, init, batch: int, lr: float, momentum: float, image: int = 28):
        self.params = P = FlatParams(init)
        w1, w2, wf = P.p["0.weight"], P.p["2.weight"], P.p["6.weight"]
        c1, cin, k, _ = w1.shape
        c2, classes = w2.shape[0], wf.shape[0]
        h1 = image - k + 1
        h2 = h1 - k + 1
        hp = h2 // 2
        B = batch
        self.dims = (B, cin, c1, c2, k, h1, h2, hp)
        self.w1, self.b1, self.w2, self.b2, self.wf, self.bf = (P.p[n] for n in self.NAMES)
        self.dw1, self.db1, self.dw2, self.db2, self.dwf, self.dbf = (P.g[n] for n in self.NAMES)
        self.w1_2d, self.w2_2d = w1.reshape(c1, -1), w2.reshape(c2, -1)
        self.dw1_2d, self.dw2_2d = self.dw1.reshape(c1, -1), self.dw2.reshape(c2, -1)
        self.cols1 = np.empty((cin, k, k, B, h1, h1), F32)
        self.y1 = np.empty((c1, B, h1, h1), F32)
        self.cols2 = np.empty((c1, k, k, B, h2, h2), F32)
        self.y2 = np.empty((c2, B, h2, h2), F32)
        self.pooled = np.empty((c2, B, hp, hp), F32)
        self.flat = np.empty((B, c2 * hp * hp), F32)
        self.dflat = np.empty((B, c2 * hp * hp), F32)
        self.dpooled = np.empty((c2, B, hp, hp), F32)
        self.pmask = np.empty((c2, B, hp, hp), bool)
        self.ptaken = np.empty((c2, B, hp, hp), bool)
        self.dy2 = np.zeros((c2, B, h2, h2), F32)
        self.dcols2 = np.empty((c1, k, k, B, h2, h2), F32)
        self.dy1 = np.empty((c1, B, h1, h1), F32)
        self.mask1 = np.empty((c1, B, h1, h1), bool)
        self.ones_b = np.ones(B, F32)
        self.ones1 = np.ones(B * h1 * h1, F32)
        self.ones2 = np.ones(B * h2 * h2, F32)
        self.head = LinearCrossEntropy(B, classes)
        self.opt = SGD(P, lr, momentum)

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        B, cin, c1, c2, k, _, _, hp = self.dims
        # conv1 + relu, channel-major: y1 (c1, B*h1*h1) = W1 @ cols1
        im2col(x.transpose(1, 0, 2, 3), self.cols1)
        cols1 = self.cols1.reshape(cin * k * k, -1)
        y1 = self.y1.reshape(c1, -1)
        np.matmul(self.w1_2d, cols1, out=y1)
        np.add(y1, self.b1[:, None], out=y1)
        np.maximum(y1, 0.0, out=y1)
        # conv2 + relu
        im2col(self.y1, self.cols2)
        cols2 = self.cols2.reshape(c1 * k * k, -1)
        y2 = self.y2.reshape(c2, -1)
        np.matmul(self.w2_2d, cols2, out=y2)
        np.add(y2, self.b2[:, None], out=y2)
        np.maximum(y2, 0.0, out=y2)
        # 2x2 max pool: the max of the four strided quarter views
        y2v = self.y2[:, :, : 2 * hp, : 2 * hp].reshape(c2, B, hp, 2, hp, 2)
        quarters = [y2v[:, :, :, a, :, b] for a in (0, 1) for b in (0, 1)]
        p = self.pooled
        np.maximum(quarters[0], quarters[1], out=p)
        np.maximum(p, quarters[2], out=p)
        np.maximum(p, quarters[3], out=p)
        # flatten in PyTorch's (c, h, w) order: the one transpose of the step
        np.copyto(self.flat.reshape(B, c2, hp * hp), p.reshape(c2, B, hp * hp).transpose(1, 0, 2))
        loss = self.head(
            self.flat, self.wf, self.bf, y, self.dwf, self.dbf, self.dflat, self.ones_b
        )
        dp = self.dpooled
        np.copyto(dp.reshape(c2, B, hp * hp), self.dflat.reshape(B, c2, hp * hp).transpose(1, 0, 2))
        # relu2 (a positive max has a positive input) and the pool: each window's gradient goes
        # to one input equal to its max, the first one (a window inside a dead region holds
        # the same positive bias value several times; the tie must not count twice)
        mask, taken = self.pmask, self.ptaken
        np.greater(p, 0.0, out=mask)
        np.multiply(dp, mask, out=dp)
        dy2v = self.dy2[:, :, : 2 * hp, : 2 * hp].reshape(c2, B, hp, 2, hp, 2)
        for i, (a, b) in enumerate((a, b) for a in (0, 1) for b in (0, 1)):
            np.equal(quarters[i], p, out=mask)
            if i == 0:
                np.copyto(taken, mask)
            else:
                np.greater(mask, taken, out=mask)  # equal to the max and not taken yet
                if i < 3:
                    np.logical_or(taken, mask, out=taken)
            np.multiply(dp, mask, out=dy2v[:, :, :, a, :, b])
        # conv2: weight and bias gradients, and the input gradient (one matmul + col2im)
        dy2 = self.dy2.reshape(c2, -1)
        np.matmul(dy2, cols2.T, out=self.dw2_2d)
        np.matmul(dy2, self.ones2, out=self.db2)
        np.matmul(self.w2_2d.T, dy2, out=self.dcols2.reshape(c1 * k * k, -1))
        col2im(self.dcols2, self.dy1)
        # relu1 and conv1 (no input gradient needed)
        dy1 = self.dy1.reshape(c1, -1)
        np.greater(y1, 0.0, out=self.mask1.reshape(c1, -1))
        np.multiply(dy1, self.mask1.reshape(c1, -1), out=dy1)
        np.matmul(dy1, cols1.T, out=self.dw1_2d)
        np.matmul(dy1, self.ones1, out=self.db1)
        self.opt.step()
        return loss

    def parameters(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.params.p.items()}


# --- W4: char transformer, 2 pre-LN blocks, AdamW ------------------------------------------------


class _BlockBuffers:
    """What one transformer block saves in its forward for its backward."""

    def __init__(self, B, T, C, H, eps):
        N = B * T
        self.ln1 = LayerNorm(N, C, eps)
        self.h1 = np.empty((N, C), F32)
        self.qkv = np.empty((N, 3 * C), F32)
        self.att_t = np.empty((B, H, T, T), F32)  # softmax probabilities, keys-major: [k, q]
        self.y = np.empty((N, C), F32)  # attention output, heads concatenated
        self.ln2 = LayerNorm(N, C, eps)
        self.h2 = np.empty((N, C), F32)
        self.f = np.empty((N, 4 * C), F32)
        self.gelu = GELUTanh((N, 4 * C))
        self.g = np.empty((N, 4 * C), F32)


def heads(a2d: np.ndarray, B, T, parts, H, hd) -> list[np.ndarray]:
    """(B*T, parts*H*hd) -> ``parts`` views of shape (B, H, T, hd)."""
    a = a2d.reshape(B, T, parts, H, hd)
    return [a[:, :, i].transpose(0, 2, 1, 3) for i in range(parts)]


def transposed(a: np.ndarray) -> np.ndarray:
    """The matrix transpose of a stack of matrices (a view)."""
    return a.swapaxes(-1, -2)


class CharTransformerAdamW:
    """Token + learned position embeddings, pre-LN blocks (causal multi-head attention, MLP 4x
    GELU(tanh)), final LayerNorm, linear head, mean cross-entropy over all positions, AdamW.

    Attention scores are kept keys-major, S^T = K Q^T of shape (B, H, T_keys, T_queries), so the
    softmax max and sum over the keys run down the columns (vectorized along the queries); the
    sums are matrix products with a ones vector. q, k, v stay strided views of the fused qkv
    projection, which BLAS reads directly.
    """

    def __init__(
        self,
        init,
        batch: int,
        ctx: int,
        n_heads: int,
        n_layers: int,
        lr: float,
        weight_decay: float,
        eps: float = 1e-5,
    ):
        self.params = P = FlatParams(init)
        V, C = init["tok.weight"].shape
        B, T, H = batch, ctx, n_heads
        N, hd = B * T, C // H
        self.dims = (B, T, C, H, hd, V)
        self.scale = 1.0 / math.sqrt(hd)
        self.x = np.empty((N, C), F32)
        self.blocks = [_BlockBuffers(B, T, C, H, eps) for _ in range(n_layers)]
        self.lnf = LayerNorm(N, C, eps)
        self.hf = np.empty((N, C), F32)
        self.head = LinearCrossEntropy(N, V)
        # keys-major causal mask: key k is visible to query q when k <= q
        self.mask_bias_t = np.where(np.tri(T, T, dtype=bool).T, 0.0, -np.inf).astype(F32)
        self.ones_t = np.ones((1, T), F32)
        self.colstat = np.empty((B, H, 1, T), F32)
        self.tmp_c = np.empty((N, C), F32)
        self.tmp_att = np.empty((B, H, T, T), F32)
        self.d_att = np.empty((B, H, T, T), F32)
        self.dx = np.empty((N, C), F32)
        self.dh = np.empty((N, C), F32)
        self.dy = np.empty((N, C), F32)
        self.dqkv = np.empty((N, 3 * C), F32)
        self.dg = np.empty((N, 4 * C), F32)
        self.onehot_t = np.zeros((V, N), F32)
        self.rows = np.arange(N)
        self.ones = np.ones(N, F32)
        self.opt = Adam(P, lr=lr, weight_decay=weight_decay, decoupled=True)
        names = (
            "ln1.weight",
            "ln1.bias",
            "attn.qkv.weight",
            "attn.qkv.bias",
            "attn.proj.weight",
            "attn.proj.bias",
            "ln2.weight",
            "ln2.bias",
            "mlp.fc.weight",
            "mlp.fc.bias",
            "mlp.proj.weight",
            "mlp.proj.bias",
        )
        self.block_params = [
            ({n: P.p[f"blocks.{i}.{n}"] for n in names}, {n: P.g[f"blocks.{i}.{n}"] for n in names})
            for i in range(n_layers)
        ]

    def step(self, idx: np.ndarray, y: np.ndarray) -> float:
        B, T, C = self.dims[:3]
        p, g = self.params.p, self.params.g
        x, tmp_c, dx, ones = self.x, self.tmp_c, self.dx, self.ones
        # embeddings
        flat_idx = idx.reshape(-1)
        np.take(p["tok.weight"], flat_idx, axis=0, out=x)
        x3 = x.reshape(B, T, C)
        np.add(x3, p["pos.weight"][:T], out=x3)
        for blk, (bp, _) in zip(self.blocks, self.block_params):
            self._attention_forward(blk, bp)
            np.add(x, tmp_c, out=x)
            self._mlp_forward(blk, bp)
            np.add(x, tmp_c, out=x)
        self.lnf.forward(x, p["ln_f.weight"], p["ln_f.bias"], self.hf)
        loss = self.head(
            self.hf,
            p["head.weight"],
            p["head.bias"],
            y.reshape(-1),
            g["head.weight"],
            g["head.bias"],
            self.dh,
            ones,
        )
        # backward
        dx.fill(0.0)
        self.lnf.backward(self.dh, p["ln_f.weight"], g["ln_f.weight"], g["ln_f.bias"], ones, dx)
        for blk, (bp, bg) in zip(reversed(self.blocks), reversed(self.block_params)):
            self._mlp_backward(blk, bp, bg)
            self._attention_backward(blk, bp, bg)
        # embeddings: positions sum over the batch; tokens via a one-hot matmul
        dpos = g["pos.weight"]
        np.sum(dx.reshape(B, T, C), axis=0, out=dpos[:T])
        if dpos.shape[0] > T:
            dpos[T:] = 0.0
        self.onehot_t[flat_idx, self.rows] = 1.0
        np.matmul(self.onehot_t, dx, out=g["tok.weight"])
        self.onehot_t[flat_idx, self.rows] = 0.0
        self.opt.step()
        return loss

    def _attention_forward(self, blk, bp):
        B, T, _, H, hd, _ = self.dims
        blk.ln1.forward(self.x, bp["ln1.weight"], bp["ln1.bias"], blk.h1)
        linear_forward(blk.h1, bp["attn.qkv.weight"], bp["attn.qkv.bias"], blk.qkv)
        q, k, v = heads(blk.qkv, B, T, 3, H, hd)
        np.multiply(q, self.scale, out=q)  # scale q once (T*hd) instead of the scores (T*T)
        att, stat = blk.att_t, self.colstat
        np.matmul(k, transposed(q), out=att)  # S^T = K Q^T
        np.add(att, self.mask_bias_t, out=att)  # causal: -inf where key > query
        np.max(att, axis=-2, keepdims=True, out=stat)
        np.subtract(att, stat, out=att)
        np.exp(att, out=att)
        np.matmul(self.ones_t, att, out=stat)
        np.divide(att, stat, out=att)
        (y,) = heads(blk.y, B, T, 1, H, hd)
        np.matmul(transposed(att), v, out=y)  # Y = P V
        linear_forward(blk.y, bp["attn.proj.weight"], bp["attn.proj.bias"], self.tmp_c)

    def _mlp_forward(self, blk, bp):
        blk.ln2.forward(self.x, bp["ln2.weight"], bp["ln2.bias"], blk.h2)
        linear_forward(blk.h2, bp["mlp.fc.weight"], bp["mlp.fc.bias"], blk.f)
        blk.gelu.forward(blk.f, blk.g)
        linear_forward(blk.g, bp["mlp.proj.weight"], bp["mlp.proj.bias"], self.tmp_c)

    def _mlp_backward(self, blk, bp, bg):
        dx, dg, ones = self.dx, self.dg, self.ones
        linear_backward_params(dx, blk.g, bg["mlp.proj.weight"], bg["mlp.proj.bias"], ones)
        np.matmul(dx, bp["mlp.proj.weight"], out=dg)
        blk.gelu.backward(dg, blk.f, dg)
        linear_backward_params(dg, blk.h2, bg["mlp.fc.weight"], bg["mlp.fc.bias"], ones)
        np.matmul(dg, bp["mlp.fc.weight"], out=self.dh)
        blk.ln2.backward(self.dh, bp["ln2.weight"], bg["ln2.weight"], bg["ln2.bias"], ones, dx)

    def _attention_backward(self, blk, bp, bg):
        B, T, _, H, hd, _ = self.dims
        dx, ones = self.dx, self.ones
        linear_backward_params(dx, blk.y, bg["attn.proj.weight"], bg["attn.proj.bias"], ones)
        np.matmul(dx, bp["attn.proj.weight"], out=self.dy)
        (dy,) = heads(self.dy, B, T, 1, H, hd)
        q, k, v = heads(blk.qkv, B, T, 3, H, hd)  # q is already scaled
        dq, dk, dv = heads(self.dqkv, B, T, 3, H, hd)
        att, d_att, tmp, stat = blk.att_t, self.d_att, self.tmp_att, self.colstat
        np.matmul(v, transposed(dy), out=d_att)  # dP^T = V dY^T
        np.matmul(att, dy, out=dv)  # dV = P^T dY
        # softmax backward, per query (column): dS = P * (dP - sum_k dP * P)
        np.multiply(d_att, att, out=tmp)
        np.matmul(self.ones_t, tmp, out=stat)
        np.multiply(att, stat, out=d_att)
        np.subtract(tmp, d_att, out=d_att)  # dS^T
        np.matmul(transposed(d_att), k, out=dq)  # dQs = dS K
        np.multiply(dq, self.scale, out=dq)
        np.matmul(d_att, q, out=dk)  # dK = dS^T Qs
        linear_backward_params(self.dqkv, blk.h1, bg["attn.qkv.weight"], bg["attn.qkv.bias"], ones)
        np.matmul(self.dqkv, bp["attn.qkv.weight"], out=self.dh)
        blk.ln1.backward(self.dh, bp["ln1.weight"], bg["ln1.weight"], bg["ln1.bias"], ones, dx)

    def parameters(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.params.p.items()}


# --- W5: LSTM language model, 2 layers, SGD with gradient clipping -------------------------------


class _LSTMLayerBuffers:
    """One LSTM layer's saved forward state (time-major, h and c with the zero initial state at
    t = 0) and its backward buffers."""

    def __init__(self, T, B, H, dtype):
        self.pre = np.empty((T, B, 4 * H), dtype)  # input projections, both biases added
        self.act = np.empty((T, B, 4 * H), dtype)  # activated gates i, f, g, o
        self.h = np.zeros((T + 1, B, H), dtype)
        self.c = np.zeros((T + 1, B, H), dtype)
        self.tanh_c = np.empty((T, B, H), dtype)
        self.d_pre = np.empty((T, B, 4 * H), dtype)


class LSTMLanguageModelSGD:
    """word_language_model's LSTM model: Embedding - LSTM (layers) - Linear decoder, mean
    cross-entropy over all positions, gradient norm clipping, plain SGD; time-major (T, B).

    Each layer projects the whole input sequence in one matmul (``X W_ih^T + b_ih + b_hh``); the
    time loop then does one (B, H) x (H, 4H) product and a few ufuncs over whole (B, 4H) rows:
    every gate goes through ``tanh`` at once, the sigmoid gates as 0.5 tanh(x / 2) + 0.5, with
    per-column scale and shift vectors. The backward loop keeps the pre-activation gradients of
    all steps, so the weight gradients are one matmul each over the whole sequence.
    """

    def __init__(self, init, batch, ctx, layers, lr, clip):
        self.params = P = FlatParams(init)
        V, E = init["encoder.weight"].shape
        H = init["rnn.weight_hh_l0"].shape[1]
        dtype = P.flat.dtype
        T, B = ctx, batch
        self.dims = (T, B, E, H, V)
        self.lr, self.clip = lr, clip
        self.layers = [
            tuple(P.p[f"rnn.{k}_l{i}"] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            for i in range(layers)
        ]
        self.grads = [
            tuple(P.g[f"rnn.{k}_l{i}"] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            for i in range(layers)
        ]
        self.buffers = [_LSTMLayerBuffers(T, B, H, dtype) for _ in range(layers)]
        self.bias = np.empty(4 * H, dtype)
        # gate columns i, f, o are sigmoids: 0.5 tanh(0.5 x) + 0.5; g is tanh
        half = np.full(4 * H, 0.5, dtype)
        half[2 * H : 3 * H] = 1.0
        self.gate_scale = half
        self.gate_shift = np.where(half == 0.5, 0.5, 0.0).astype(dtype)
        self.tanh_columns = (half == 1.0).astype(dtype)
        self.x = np.empty((T * B, E), dtype)
        self.dx = np.empty((T * B, max(E, H)), dtype)
        self.dh = np.empty((B, H), dtype)
        self.dc = np.empty((B, H), dtype)
        self.tmp = np.empty((B, H), dtype)
        self.tmp4 = np.empty((B, 4 * H), dtype)
        self.ones = np.ones(T * B, dtype)
        self.onehot_t = np.zeros((V, T * B), dtype)
        self.rows = np.arange(T * B)
        self.head = LinearCrossEntropy(T * B, V, dtype)

    def step(self, idx: np.ndarray, y: np.ndarray) -> float:
        T, B, _, H, _ = self.dims
        p, g = self.params.p, self.params.g
        flat_idx = idx.reshape(-1)
        np.take(p["encoder.weight"], flat_idx, axis=0, out=self.x)
        inp = self.x
        for weights, buf in zip(self.layers, self.buffers):
            self._layer_forward(inp, weights, buf)
            inp = buf.h[1:].reshape(T * B, H)
        d_top = self.dx[:, :H]
        loss = self.head(
            inp,
            p["decoder.weight"],
            p["decoder.bias"],
            y.reshape(-1),
            g["decoder.weight"],
            g["decoder.bias"],
            d_top,
            self.ones,
        )
        d_out = d_top
        for i in range(len(self.layers) - 1, -1, -1):
            below = self.buffers[i - 1].h[1:].reshape(T * B, H) if i else self.x
            d_in = self.dx[:, : below.shape[1]]
            self._layer_backward(d_out.reshape(T, B, H), below, i, d_in)
            d_out = d_in
        # the embedding gradient: a one-hot matmul sums the rows of equal tokens
        self.onehot_t[flat_idx, self.rows] = 1.0
        np.matmul(self.onehot_t, d_out, out=g["encoder.weight"])
        self.onehot_t[flat_idx, self.rows] = 0.0
        clip_grad_norm(self.params, self.clip)
        self._sgd()
        return loss

    def _sgd(self):
        p, g = self.params.flat, self.params.grad_flat
        np.multiply(g, self.lr, out=g)
        np.subtract(p, g, out=p)

    def _layer_forward(self, x, weights, buf):
        T, B, _, H, _ = self.dims
        w_ih, w_hh, b_ih, b_hh = weights
        np.add(b_ih, b_hh, out=self.bias)
        pre = buf.pre.reshape(T * B, 4 * H)
        linear_forward(x, w_ih, self.bias, pre)
        scale, shift, tmp = self.gate_scale, self.gate_shift, self.tmp
        for t in range(T):
            a = buf.act[t]
            np.matmul(buf.h[t], w_hh.T, out=a)
            np.add(a, buf.pre[t], out=a)
            np.multiply(a, scale, out=a)
            np.tanh(a, out=a)
            np.multiply(a, scale, out=a)
            np.add(a, shift, out=a)
            i, f, gg, o = (a[:, k * H : (k + 1) * H] for k in range(4))
            c = buf.c[t + 1]
            np.multiply(f, buf.c[t], out=c)
            np.multiply(i, gg, out=tmp)
            np.add(c, tmp, out=c)
            np.tanh(c, out=buf.tanh_c[t])
            np.multiply(o, buf.tanh_c[t], out=buf.h[t + 1])

    def _layer_backward(self, d_out, x, layer, d_in):
        """Gradients of layer ``layer`` given d_out (T, B, H), its input x (T*B, In); the input
        gradient goes to ``d_in``."""
        T, B, _, H, _ = self.dims
        w_ih, w_hh, _, _ = self.layers[layer]
        dw_ih, dw_hh, db_ih, db_hh = self.grads[layer]
        buf = self.buffers[layer]
        dh, dc, tmp, tmp4 = self.dh, self.dc, self.tmp, self.tmp4
        dh.fill(0.0)
        dc.fill(0.0)
        for t in range(T - 1, -1, -1):
            a, da = buf.act[t], buf.d_pre[t]
            i, f, gg, o = (a[:, k * H : (k + 1) * H] for k in range(4))
            di, df, dg, do = (da[:, k * H : (k + 1) * H] for k in range(4))
            np.add(dh, d_out[t], out=dh)
            tc = buf.tanh_c[t]
            np.multiply(dh, tc, out=do)
            # dc += dh * o * (1 - tanh(c)^2)
            np.multiply(tc, tc, out=tmp)
            np.subtract(1.0, tmp, out=tmp)
            np.multiply(tmp, o, out=tmp)
            np.multiply(tmp, dh, out=tmp)
            np.add(dc, tmp, out=dc)
            np.multiply(dc, gg, out=di)
            np.multiply(dc, i, out=dg)
            np.multiply(dc, buf.c[t], out=df)
            np.multiply(dc, f, out=dc)  # the cell gradient carried to t - 1
            # through the activations, whole rows: sigmoid' = (1 - s) s on i, f, o and
            # tanh' = (1 - g)(1 + g) on g
            np.subtract(1.0, a, out=tmp4)
            np.multiply(da, tmp4, out=da)
            np.add(a, self.tanh_columns, out=tmp4)
            np.multiply(da, tmp4, out=da)
            np.matmul(da, w_hh, out=dh)
        d_pre = buf.d_pre.reshape(T * B, 4 * H)
        np.matmul(d_pre.T, x, out=dw_ih)
        np.matmul(d_pre.T, buf.h[:-1].reshape(T * B, H), out=dw_hh)
        np.matmul(self.ones, d_pre, out=db_ih)
        np.copyto(db_hh, db_ih)
        np.matmul(d_pre, w_ih, out=d_in)

    def parameters(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.params.p.items()}


# --- W7: VAE 784-400-20, Adam ---------------------------------------------------------------------


class VAEAdam:
    """PyTorch's VAE example: fc1 784-400 relu, fc21/fc22 400-20 (mu, logvar), z = mu + eps *
    exp(logvar / 2), fc3 20-400 relu, fc4 400-784 sigmoid; loss = BCE (sum) + KL; Adam.

    ``eps`` is drawn from tracegrad's generator exactly as ``tg.randn_like`` draws it (NumPy's
    float64 normals, cast), so a step seeded like tracegrad's sees the same noise. fc21 and
    fc22 are held as one (40, 400) layer "fc2" (stacked in the flat buffer): one matmul makes
    [mu | logvar], and one makes their gradients. The BCE of r = sigmoid(a) comes from the
    sigmoid's own denominator e = 1 + exp(-a): BCE = sum(log e) + sum(a) - x . a (a BLAS dot),
    and its gradient with respect to a is r - x.
    """

    def __init__(self, init, batch, lr, generator):
        stacked = {
            "fc2.weight": np.concatenate([init["fc21.weight"], init["fc22.weight"]]),
            "fc2.bias": np.concatenate([init["fc21.bias"], init["fc22.bias"]]),
        }
        names = ("fc1.weight", "fc1.bias", "fc3.weight", "fc3.bias", "fc4.weight", "fc4.bias")
        self.params = P = FlatParams({**{k: init[k] for k in names}, **stacked})
        self.generator = generator
        B = batch
        hidden, D = init["fc1.weight"].shape
        L = init["fc21.weight"].shape[0]
        dtype = P.flat.dtype
        self.dims = (B, D, hidden, L)
        self.h1 = np.empty((B, hidden), dtype)
        self.ml = np.empty((B, 2 * L), dtype)  # [mu | logvar]
        self.eps = np.empty((B, L), dtype)
        self.std = np.empty((B, L), dtype)
        self.var = np.empty((B, L), dtype)
        self.z = np.empty((B, L), dtype)
        self.h3 = np.empty((B, hidden), dtype)
        self.a = np.empty((B, D), dtype)
        self.e = np.empty((B, D), dtype)
        self.log_e = np.empty((B, D), dtype)
        self.dh = np.empty((B, hidden), dtype)
        self.dml = np.empty((B, 2 * L), dtype)
        self.dz = np.empty((B, L), dtype)
        self.mask = np.empty((B, hidden), bool)
        self.ones = np.ones(B, dtype)
        self.opt = Adam(P, lr=lr)

    def step(self, x: np.ndarray, _target: np.ndarray) -> float:
        B, _, _, L = self.dims
        p, g = self.params.p, self.params.g
        h1, ml, std, var, z = self.h1, self.ml, self.std, self.var, self.z
        h3, a, e, dh, mask, ones = self.h3, self.a, self.e, self.dh, self.mask, self.ones
        mu, logvar = ml[:, :L], ml[:, L:]
        # encoder
        linear_forward(x, p["fc1.weight"], p["fc1.bias"], h1)
        np.maximum(h1, 0.0, out=h1)
        linear_forward(h1, p["fc2.weight"], p["fc2.bias"], ml)
        # reparameterization, drawn as tg.randn_like draws
        np.copyto(self.eps, self.generator().standard_normal((B, L)))
        np.multiply(logvar, 0.5, out=std)
        np.exp(std, out=std)
        np.multiply(self.eps, std, out=z)
        np.add(z, mu, out=z)
        # decoder; a holds the logits of the reconstruction
        linear_forward(z, p["fc3.weight"], p["fc3.bias"], h3)
        np.maximum(h3, 0.0, out=h3)
        linear_forward(h3, p["fc4.weight"], p["fc4.bias"], a)
        np.negative(a, out=e)
        np.exp(e, out=e)
        np.add(e, 1.0, out=e)
        np.log(e, out=self.log_e)
        bce = self.log_e.sum() + a.sum() - np.vdot(x, a)
        np.multiply(std, std, out=var)  # exp(logvar)
        kl = -0.5 * (B * L + logvar.sum() - np.vdot(mu, mu) - var.sum())
        loss = float(bce + kl)
        # backward: d a = sigmoid(a) - x = 1 / e - x
        np.divide(1.0, e, out=e)
        np.subtract(e, x, out=e)
        linear_backward_params(e, h3, g["fc4.weight"], g["fc4.bias"], ones)
        np.matmul(e, p["fc4.weight"], out=dh)
        np.greater(h3, 0.0, out=mask)
        np.multiply(dh, mask, out=dh)
        linear_backward_params(dh, z, g["fc3.weight"], g["fc3.bias"], ones)
        np.matmul(dh, p["fc3.weight"], out=self.dz)
        # d mu = dz + mu; d logvar = (dz eps std + exp(logvar) - 1) / 2
        dmu, dlogvar = self.dml[:, :L], self.dml[:, L:]
        np.add(self.dz, mu, out=dmu)
        np.multiply(self.dz, self.eps, out=dlogvar)
        np.multiply(dlogvar, std, out=dlogvar)
        np.add(dlogvar, var, out=dlogvar)
        np.subtract(dlogvar, 1.0, out=dlogvar)
        np.multiply(dlogvar, 0.5, out=dlogvar)
        linear_backward_params(self.dml, h1, g["fc2.weight"], g["fc2.bias"], ones)
        np.matmul(self.dml, p["fc2.weight"], out=dh)
        np.greater(h1, 0.0, out=mask)
        np.multiply(dh, mask, out=dh)
        linear_backward_params(dh, x, g["fc1.weight"], g["fc1.bias"], ones)
        self.opt.step()
        return loss

    def parameters(self) -> dict[str, np.ndarray]:
        p, L = self.params.p, self.dims[3]
        split = {
            "fc21.weight": p["fc2.weight"][:L],
            "fc22.weight": p["fc2.weight"][L:],
            "fc21.bias": p["fc2.bias"][:L],
            "fc22.bias": p["fc2.bias"][L:],
        }
        rest = {k: v for k, v in p.items() if not k.startswith("fc2.")}
        return {k: v.copy() for k, v in {**rest, **split}.items()}


# --- W6: ResNet-style CNN with BatchNorm, SGD momentum + weight decay -----------------------------


def im2col_strided(src: np.ndarray, cols: np.ndarray, stride: int) -> None:
    """src (C, B, H, W), already padded -> cols (C, k, k, B, OH, OW), one copy per tap."""
    k, oh, ow = cols.shape[1], cols.shape[4], cols.shape[5]
    for i in range(k):
        for j in range(k):
            window = src[
                :, :, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride
            ]
            np.copyto(cols[:, i, j], window)


def col2im_add(cols: np.ndarray, dst: np.ndarray, stride: int) -> None:
    """The transpose of ``im2col_strided``, ADDED into dst (padded like the source was)."""
    k, oh, ow = cols.shape[1], cols.shape[4], cols.shape[5]
    for i in range(k):
        for j in range(k):
            target = dst[
                :, :, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride
            ]
            np.add(target, cols[:, i, j], out=target)


class ConvBatchNorm:
    """A bias-free convolution followed by training-mode batch norm, channel-major.

    The convolution is im2col + one matmul ``W (Cout, Cin*k*k) @ cols``; the batch statistics
    are matrix-vector products of the (Cout, N) rows with a vector of 1/N (long contiguous
    rows). The backward uses the closed form dz = w rstd (dy - sum(dy)/N - xhat sum(dy xhat)/N),
    whose two sums are the bias's and the weight's gradients.
    """

    def __init__(self, P, conv, bn, src_shape, stride, out_hw, eps=1e-5, momentum=0.1):
        self.w = P.p[f"{conv}.weight"]
        self.dw = P.g[f"{conv}.weight"]
        self.gamma, self.beta = P.p[f"{bn}.weight"], P.p[f"{bn}.bias"]
        self.dgamma, self.dbeta = P.g[f"{bn}.weight"], P.g[f"{bn}.bias"]
        dtype = P.flat.dtype
        cout, cin, k, _ = self.w.shape
        B = src_shape[1]
        N = B * out_hw * out_hw
        self.stride, self.eps, self.momentum, self.n = stride, eps, momentum, N
        self.out_shape = (cout, B, out_hw, out_hw)
        self.w2d, self.dw2d = self.w.reshape(cout, -1), self.dw.reshape(cout, -1)
        self.cols = np.empty((cin, k, k, B, out_hw, out_hw), dtype)
        self.cols2d = self.cols.reshape(cin * k * k, N)
        self.dcols = np.empty_like(self.cols)
        self.xhat = np.empty((cout, N), dtype)
        self.tmp = np.empty((cout, N), dtype)
        self.mean = np.empty(cout, dtype)
        self.var = np.empty(cout, dtype)
        self.rstd = np.empty(cout, dtype)
        self.coef = np.empty(cout, dtype)
        self.inv_n = np.full(N, 1.0 / N, dtype)
        self.running_mean = np.zeros(cout, dtype)
        self.running_var = np.ones(cout, dtype)

    def forward(self, src, out):
        """out (Cout, B, OH, OW), any strides: the normalized, scaled and shifted convolution."""
        xhat, mean, var, rstd, m = self.xhat, self.mean, self.var, self.rstd, self.momentum
        im2col_strided(src, self.cols, self.stride)
        np.matmul(self.w2d, self.cols2d, out=xhat)
        np.matmul(xhat, self.inv_n, out=mean)
        np.subtract(xhat, mean[:, None], out=xhat)
        np.multiply(xhat, xhat, out=self.tmp)
        np.matmul(self.tmp, self.inv_n, out=var)
        # running statistics: the unbiased variance, as PyTorch keeps it
        self.running_mean *= 1.0 - m
        self.running_mean += m * mean
        self.running_var *= 1.0 - m
        self.running_var += (m * self.n / (self.n - 1)) * var
        np.add(var, self.eps, out=rstd)
        np.sqrt(rstd, out=rstd)
        np.divide(1.0, rstd, out=rstd)
        np.multiply(xhat, rstd[:, None], out=xhat)
        out4 = xhat.reshape(self.out_shape)
        np.multiply(out4, self.gamma[:, None, None, None], out=out)
        np.add(out, self.beta[:, None, None, None], out=out)

    def backward(self, dy, dsrc):
        """dy (Cout, N) contiguous; parameter gradients, and the input gradient ADDED into
        ``dsrc`` (padded as the source was; None: not needed)."""
        xhat, tmp, n = self.xhat, self.tmp, self.n
        np.multiply(dy, xhat, out=tmp)
        np.matmul(tmp, self.inv_n, out=self.dgamma)  # mean(dy xhat); scaled by N below
        np.matmul(dy, self.inv_n, out=self.dbeta)  # mean(dy)
        # dz = gamma rstd (dy - mean(dy) - xhat mean(dy xhat))
        np.multiply(xhat, self.dgamma[:, None], out=tmp)
        np.subtract(dy, tmp, out=tmp)
        np.subtract(tmp, self.dbeta[:, None], out=tmp)
        np.multiply(self.gamma, self.rstd, out=self.coef)
        np.multiply(tmp, self.coef[:, None], out=tmp)
        self.dgamma *= n
        self.dbeta *= n
        np.matmul(tmp, self.cols2d.T, out=self.dw2d)
        if dsrc is not None:
            np.matmul(self.w2d.T, tmp, out=self.dcols.reshape(self.cols2d.shape))
            col2im_add(self.dcols, dsrc, self.stride)


def _interior(padded: np.ndarray) -> np.ndarray:
    return padded[:, :, 1:-1, 1:-1]


class _ResidualBlock:
    """A BasicBlock: conv3x3-bn-relu, conv3x3-bn, plus the input or its 1x1 conv-bn, relu.
    Its input arrives padded by one (for its first conv); its hidden activation is kept padded
    too (for the second)."""

    def __init__(self, P, prefix, cin, cout, stride, B, hw, dtype):
        out_hw = hw // stride
        src_shape = (cin, B, hw + 2, hw + 2)
        self.stride = stride
        self.conv1 = ConvBatchNorm(P, f"{prefix}.conv1", f"{prefix}.bn1", src_shape, stride, out_hw)
        hidden_shape = (cout, B, out_hw + 2, out_hw + 2)
        self.conv2 = ConvBatchNorm(P, f"{prefix}.conv2", f"{prefix}.bn2", hidden_shape, 1, out_hw)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = ConvBatchNorm(
                P, f"{prefix}.shortcut.0", f"{prefix}.shortcut.1", src_shape, stride, out_hw
            )
            self.sc_out = np.empty((cout, B, out_hw, out_hw), dtype)
        self.h_pad = np.zeros(hidden_shape, dtype)
        self.dh_pad = np.zeros(hidden_shape, dtype)
        self.y2 = np.empty((cout, B, out_hw, out_hw), dtype)
        self.dsum = np.empty((cout, B * out_hw * out_hw), dtype)
        self.mask_out = np.empty((cout, B, out_hw, out_hw), bool)
        self.mask_h = np.empty((cout, B, out_hw, out_hw), bool)
        self.dh = np.empty((cout, B * out_hw * out_hw), dtype)

    def forward(self, x_pad, out):
        h = _interior(self.h_pad)
        self.conv1.forward(x_pad, h)
        np.maximum(h, 0.0, out=h)
        self.conv2.forward(self.h_pad, self.y2)
        if self.shortcut is None:
            np.add(self.y2, _interior(x_pad), out=self.y2)
        else:
            self.shortcut.forward(_interior(x_pad), self.sc_out)
            np.add(self.y2, self.sc_out, out=self.y2)
        np.maximum(self.y2, 0.0, out=out)
        self.out = out

    def backward(self, d_out, dx_pad):
        """d_out: the gradient of the block's output; the input's gradient is ADDED into
        ``dx_pad`` (padded like the input)."""
        dsum = self.dsum.reshape(self.y2.shape)
        np.greater(self.out, 0.0, out=self.mask_out)
        np.multiply(d_out, self.mask_out, out=dsum)
        self.dh_pad.fill(0.0)
        self.conv2.backward(self.dsum, self.dh_pad)
        dh = self.dh.reshape(self.y2.shape)
        np.greater(_interior(self.h_pad), 0.0, out=self.mask_h)
        np.multiply(_interior(self.dh_pad), self.mask_h, out=dh)
        self.conv1.backward(self.dh, dx_pad)
        if self.shortcut is None:
            dx = _interior(dx_pad)
            np.add(dx, dsum, out=dx)
        else:
            self.shortcut.backward(self.dsum, _interior(dx_pad))

    def convs(self):
        return [self.conv1, self.conv2] + ([self.shortcut] if self.shortcut else [])


class ResNetSGD:
    """conv3x3-bn-relu stem, residual BasicBlocks, global average pool, linear; mean
    cross-entropy; SGD with momentum and weight decay; batch norm in training mode (batch
    statistics, running statistics updated).

    Activations are channel-major (C, B, H, W) and every block input is kept zero-padded by
    one, so each 3x3 convolution is nine strided copies and one matmul (see ``ConvBatchNorm``),
    and its input gradient one matmul and nine adds into a padded gradient buffer.
    """

    def __init__(self, init, batch, image, widths, strides, lr, momentum, weight_decay):
        self.params = P = FlatParams(init)
        dtype = P.flat.dtype
        B, hw = batch, image
        cin = init["conv1.weight"].shape[1]
        self.x_pad = np.zeros((cin, B, hw + 2, hw + 2), dtype)
        c0 = init["conv1.weight"].shape[0]
        self.stem = ConvBatchNorm(P, "conv1", "bn1", self.x_pad.shape, 1, hw)
        self.blocks, self.pads = [], []  # the blocks and their padded inputs
        c = c0
        for i, (width, stride) in enumerate(zip(widths, strides)):
            self.blocks.append(_ResidualBlock(P, f"layers.{i}", c, width, stride, B, hw, dtype))
            self.pads.append(np.zeros((c, B, hw + 2, hw + 2), dtype))
            c, hw = width, hw // stride
        self.dpads = [np.zeros_like(pad) for pad in self.pads]
        self.dims = (B, c, hw)
        self.last = np.empty((c, B, hw, hw), dtype)
        self.inv_hw = np.full(hw * hw, 1.0 / (hw * hw), dtype)
        self.pooled_t = np.empty((c, B), dtype)
        self.pooled = np.empty((B, c), dtype)
        self.dpooled = np.empty((B, c), dtype)
        self.d_last = np.empty((c, B, hw, hw), dtype)
        self.stem_mask = np.empty(self.stem.out_shape, bool)
        self.d_stem = np.empty((c0, self.stem.n), dtype)
        self.ones_b = np.ones(B, dtype)
        self.head = LinearCrossEntropy(B, init["linear.weight"].shape[0], dtype)
        self.opt = SGD(P, lr, momentum, weight_decay)

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        B, c, hw = self.dims
        p, g = self.params.p, self.params.g
        np.copyto(_interior(self.x_pad), x.transpose(1, 0, 2, 3))
        stem_out = _interior(self.pads[0])
        self.stem.forward(self.x_pad, stem_out)
        np.maximum(stem_out, 0.0, out=stem_out)
        outs = [_interior(pad) for pad in self.pads[1:]] + [self.last]
        for block, src, out in zip(self.blocks, self.pads, outs):
            block.forward(src, out)
        np.matmul(self.last.reshape(c * B, hw * hw), self.inv_hw, out=self.pooled_t.reshape(-1))
        np.copyto(self.pooled, self.pooled_t.T)
        loss = self.head(
            self.pooled,
            p["linear.weight"],
            p["linear.bias"],
            y,
            g["linear.weight"],
            g["linear.bias"],
            self.dpooled,
            self.ones_b,
        )
        # the pool's gradient: each position gets 1/(hw*hw) of its channel's
        np.multiply(self.dpooled.T[:, :, None, None], self.inv_hw[0], out=self.d_last)
        d_out = self.d_last
        for i in range(len(self.blocks) - 1, -1, -1):
            self.dpads[i].fill(0.0)
            self.blocks[i].backward(d_out, self.dpads[i])
            d_out = _interior(self.dpads[i])
        d_stem = self.d_stem.reshape(self.stem.out_shape)
        np.greater(stem_out, 0.0, out=self.stem_mask)
        np.multiply(d_out, self.stem_mask, out=d_stem)
        self.stem.backward(self.d_stem, None)
        self.opt.step()
        return loss

    def parameters(self) -> dict[str, np.ndarray]:
        return {k: v.copy() for k, v in self.params.p.items()}

    def running_stats(self) -> dict[str, np.ndarray]:
        """Each batch norm's running mean and variance under the model's buffer names."""
        layers = {"bn1": self.stem}
        for i, block in enumerate(self.blocks):
            names = ("bn1", "bn2", "shortcut.1")
            layers.update({f"layers.{i}.{n}": conv for n, conv in zip(names, block.convs())})
        stats = {}
        for name, conv in layers.items():
            stats[f"{name}.running_mean"] = conv.running_mean.copy()
            stats[f"{name}.running_var"] = conv.running_var.copy()
        return stats
