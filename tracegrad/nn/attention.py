"""Attention and Transformer layers with PyTorch's names, parameters and state_dict keys:
MultiheadAttention, TransformerEncoderLayer, TransformerEncoder, TransformerDecoderLayer,
TransformerDecoder and Transformer.

Everything is written in tensor ops (no fused kernel), so gradients, tracing and compiling come
free. PyTorch's "fast path" (fused kernels and nested tensors, taken only in inference) is not
reproduced: the results are those of PyTorch's reference path. One difference follows: PyTorch
returns zeros at the padded positions of a TransformerEncoder's output when that fast path runs
(eval mode, no grad, ``src_key_padding_mask`` given); here they hold the computed values.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

from tracegrad import creation, dtypes
from tracegrad.errors import ShapeError, at_user_line
from tracegrad.nn import functional as F
from tracegrad.nn import init
from tracegrad.nn.containers import ModuleList
from tracegrad.nn.layers import Dropout, LayerNorm, Linear, _empty
from tracegrad.nn.module import Module
from tracegrad.nn.parameter import Parameter
from tracegrad.tensor import Tensor, as_tensor, cat


class MultiheadAttention(Module):
    """Attention over ``num_heads`` heads of ``embed_dim // num_heads`` features each.

    Inputs are (L, N, E) query and (S, N, kdim) / (S, N, vdim) key and value, or batch first
    with ``batch_first=True``, or unbatched (L, E). ``forward`` returns the (L, N, E) output and,
    with ``need_weights``, the attention weights (N, L, S) averaged over heads, or
    (N, num_heads, L, S) with ``average_attn_weights=False``; else None.
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        device=None,
        dtype=None,
    ):
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads:
            raise ValueError(
                f"MultiheadAttention: embed_dim ({embed_dim}) must be a positive multiple of "
                f"num_heads ({num_heads})"
            )
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.batch_first, self.head_dim = batch_first, embed_dim // num_heads
        made = {"device": device, "dtype": dtype}
        if self._qkv_same_embed_dim:
            self.in_proj_weight = _empty(3 * embed_dim, embed_dim, **made)
            for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                self.register_parameter(name, None)
        else:
            self.q_proj_weight = _empty(embed_dim, embed_dim, **made)
            self.k_proj_weight = _empty(embed_dim, self.kdim, **made)
            self.v_proj_weight = _empty(embed_dim, self.vdim, **made)
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = _empty(3 * embed_dim, **made)
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, **made)
        if add_bias_kv:
            self.bias_k: Parameter | None = _empty(1, 1, embed_dim, **made)
            self.bias_v: Parameter | None = _empty(1, 1, embed_dim, **made)
        else:
            self.bias_k = self.bias_v = None
        self.add_zero_attn = add_zero_attn
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        # PyTorch's: Xavier for the input projections, zero biases, the output projection's
        # weight left at Linear's initialisation
        if self._qkv_same_embed_dim:
            init.xavier_uniform_(self.in_proj_weight)
        else:
            for weight in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
                init.xavier_uniform_(weight)
        if self.in_proj_bias is not None:
            init.constant_(self.in_proj_bias, 0.0)
        if self.out_proj.bias is not None:
            init.constant_(self.out_proj.bias, 0.0)
        for extra in (self.bias_k, self.bias_v):
            if extra is not None:
                init.xavier_normal_(extra)

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        need_weights: bool = True,
        attn_mask: Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ):
        batched = self._check_inputs(query, key, value)
        if not batched:  # one sequence: a batch of one, in the middle as PyTorch lays it out
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = as_tensor(key_padding_mask).unsqueeze(0)
        elif self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        if is_causal and attn_mask is None:
            raise ValueError(
                "MultiheadAttention: is_causal is a hint that attn_mask is the causal mask; "
                "pass attn_mask too (Transformer.generate_square_subsequent_mask makes it)"
            )
        if is_causal and key_padding_mask is None and not need_weights:
            # As PyTorch: the hint replaces the mask (the same one when the hint is true)
            attn_mask = ~F._causal_mask(query.shape[0], key.shape[0])
        output, weights = self._attend(query, key, value, key_padding_mask, attn_mask)
        if not batched:
            output, weights = output.squeeze(1), weights.squeeze(0)
        elif self.batch_first:
            output = output.transpose(0, 1)
        if not need_weights:
            return output, None
        return output, weights.mean(dim=-3) if average_attn_weights else weights

    def _check_inputs(self, query: Tensor, key: Tensor, value: Tensor) -> bool:
        """Whether the inputs are batched; raises on shapes that do not fit."""
        shapes = f"query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}"
        batch_dim = 0 if self.batch_first else 1
        if query.ndim not in (2, 3) or key.ndim != query.ndim or value.ndim != query.ndim:
            problem = "expects 3-d (batched) or 2-d (unbatched) query, key and value alike"
        elif query.shape[-1] != self.embed_dim:
            problem = f"expects query with embed_dim={self.embed_dim} features"
        elif key.shape[-1] != self.kdim or value.shape[-1] != self.vdim:
            problem = f"expects key with kdim={self.kdim} and value with vdim={self.vdim} features"
        elif key.shape[:-1] != value.shape[:-1]:
            problem = "expects key and value of the same length and batch"
        elif query.ndim == 3 and query.shape[batch_dim] != key.shape[batch_dim]:
            problem = f"expects query and key of the same batch (batch_first={self.batch_first})"
        else:
            return query.ndim == 3
        raise ShapeError(at_user_line(f"MultiheadAttention {problem}, got {shapes}"))

    def _attend(self, query, key, value, key_padding_mask, attn_mask):
        """The attention of (L, N, E) queries over (S, N, .) keys and values: the (L, N, E)
        output and the (N, num_heads, L, S') weights."""
        length, batch = query.shape[0], query.shape[1]
        q, k, v = self._project(query, key, value)
        mask = self._float_mask(attn_mask, key_padding_mask, batch, length, key.shape[0], q.dtype)
        if self.bias_k is not None:  # one more key and value, learned, that every query sees
            k = cat([k, self.bias_k.expand(1, batch, self.embed_dim)])
            v = cat([v, self.bias_v.expand(1, batch, self.embed_dim)])
            mask = _one_more_key(mask)
        q, k, v = (self._split_heads(t, batch) for t in (q, k, v))
        if self.add_zero_attn:  # and one more key and value of zeros
            k, v = (
                cat([t, creation.zeros(t.shape[0], 1, t.shape[2], dtype=t.dtype)], 1)
                for t in (k, v)
            )
            mask = _one_more_key(mask)
        scores = (q * math.sqrt(1.0 / self.head_dim)) @ k.transpose(-2, -1)
        if mask is not None:
            scores = scores + mask
        weights = F.dropout(scores.softmax(-1), self.dropout, self.training)
        heads = (weights @ v).transpose(0, 1).reshape(length, batch, self.embed_dim)
        output = self.out_proj(heads)
        return output, weights.reshape(batch, self.num_heads, length, weights.shape[-1])

    def _project(self, query, key, value):
        if self._qkv_same_embed_dim:
            weights = self.in_proj_weight.chunk(3)
        else:
            weights = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        biases = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3
        return tuple(
            F.linear(x, w, b) for x, w, b in zip((query, key, value), weights, biases, strict=True)
        )

    def _split_heads(self, x: Tensor, batch: int) -> Tensor:
        """(T, N, E) -> (N * num_heads, T, head_dim), PyTorch's layout of the heads."""
        return x.reshape(x.shape[0], batch * self.num_heads, self.head_dim).transpose(0, 1)

    def _float_mask(self, attn_mask, key_padding_mask, batch, length, source, dtype):
        """The masks as one float (1 or N * num_heads, L, S) term added to the scores (bool
        masks: True is masked out, -inf), or None."""
        heads = batch * self.num_heads
        mask = None
        if attn_mask is not None:
            mask = _as_float("attn_mask", attn_mask, dtype)
            if tuple(mask.shape) not in ((length, source), (heads, length, source)):
                raise ShapeError(
                    at_user_line(
                        f"MultiheadAttention: attn_mask of shape {tuple(mask.shape)} should be "
                        f"({length}, {source}) or ({heads}, {length}, {source}) (L, S or "
                        "N * num_heads, L, S)"
                    )
                )
            mask = mask.reshape(-1, length, source)
        if key_padding_mask is not None:
            padding = _as_float("key_padding_mask", key_padding_mask, dtype)
            if tuple(padding.shape) != (batch, source):
                raise ShapeError(
                    at_user_line(
                        f"MultiheadAttention: key_padding_mask of shape {tuple(padding.shape)} "
                        f"should be ({batch}, {source}) (N, S)"
                    )
                )
            padding = padding.reshape(batch, 1, 1, source).expand(batch, self.num_heads, 1, source)
            padding = padding.reshape(heads, 1, source)
            mask = padding if mask is None else mask + padding
        return mask


def _as_float(name: str, mask, dtype) -> Tensor:
    """PyTorch's canonical form of an attention mask: bool True (masked out) becomes -inf, a
    float mask is kept as it is."""
    mask = as_tensor(mask)
    if mask.dtype is dtypes.bool_:
        return creation.zeros(*mask.shape, dtype=dtype).masked_fill(mask, float("-inf"))
    if not mask.dtype.is_floating_point:
        raise TypeError(f"MultiheadAttention: {name} must be bool or floating, got {mask.dtype}")
    return mask


def _one_more_key(mask: Tensor | None) -> Tensor | None:
    """A mask for one more key that every query sees: a zero column at the end."""
    if mask is None:
        return None
    return cat([mask, creation.zeros(*mask.shape[:-1], 1, dtype=mask.dtype)], -1)


# --- Transformer layers --------------------------------------------------------------------------


def _activation(activation):
    """PyTorch's names for the feed-forward activation, or any callable as it is."""
    if activation == "relu":
        return F.relu
    if activation == "gelu":
        return F.gelu
    if callable(activation):
        return activation
    raise ValueError(f"activation should be relu/gelu or a callable, not {activation!r}")


class _Blocks:
    """The self-attention and feed-forward blocks both Transformer layers share."""

    # the layers each Transformer layer makes, which the blocks read
    self_attn: MultiheadAttention
    linear1: Linear
    linear2: Linear
    dropout: Dropout
    activation: Callable[[Tensor], Tensor]

    def _ff_block(self, x: Tensor, dropout: Dropout) -> Tensor:
        return dropout(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def _sa_block(self, x, attn_mask, key_padding_mask, is_causal, dropout: Dropout) -> Tensor:
        x = self.self_attn(
            x,
            x,
            x,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            need_weights=False,
            is_causal=is_causal,
        )[0]
        return dropout(x)


class TransformerEncoderLayer(_Blocks, Module):
    """Self-attention then a feed-forward network, each with a residual connection and a
    LayerNorm (after it, or before it with ``norm_first=True``)."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation=F.relu,
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        made = {"device": device, "dtype": dtype}
        self.self_attn = MultiheadAttention(
            d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first, **made
        )
        _add_feed_forward(self, d_model, dim_feedforward, dropout, bias, made)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **made)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **made)
        self.dropout1, self.dropout2 = Dropout(dropout), Dropout(dropout)
        self.activation = _activation(activation)

    def forward(
        self, src, src_mask=None, src_key_padding_mask=None, is_causal: bool = False
    ) -> Tensor:
        x = src
        if self.norm_first:
            x = x + self._sa_block(
                self.norm1(x), src_mask, src_key_padding_mask, is_causal, self.dropout1
            )
            return x + self._ff_block(self.norm2(x), self.dropout2)
        x = self.norm1(
            x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal, self.dropout1)
        )
        return self.norm2(x + self._ff_block(x, self.dropout2))


class TransformerDecoderLayer(_Blocks, Module):
    """Self-attention, attention over the encoder's output (``memory``), then a feed-forward
    network, each with a residual connection and a LayerNorm (after, or before with
    ``norm_first=True``)."""

    def __init__(
        self,
        d_model: int,
        nhead: int,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation=F.relu,
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        made = {"device": device, "dtype": dtype}
        attention = {"dropout": dropout, "bias": bias, "batch_first": batch_first, **made}
        self.self_attn = MultiheadAttention(d_model, nhead, **attention)
        self.multihead_attn = MultiheadAttention(d_model, nhead, **attention)
        _add_feed_forward(self, d_model, dim_feedforward, dropout, bias, made)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **made)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **made)
        self.norm3 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **made)
        self.dropout1, self.dropout2, self.dropout3 = (Dropout(dropout) for _ in range(3))
        self.activation = _activation(activation)

    def forward(
        self,
        tgt,
        memory,
        tgt_mask=None,
        memory_mask=None,
        tgt_key_padding_mask=None,
        memory_key_padding_mask=None,
        tgt_is_causal: bool = False,
        memory_is_causal: bool = False,
    ):
        x = tgt
        self_masks = (tgt_mask, tgt_key_padding_mask, tgt_is_causal, self.dropout1)
        memory_masks = (memory_mask, memory_key_padding_mask, memory_is_causal)
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), *self_masks)
            x = x + self._mha_block(self.norm2(x), memory, *memory_masks)
            return x + self._ff_block(self.norm3(x), self.dropout3)
        x = self.norm1(x + self._sa_block(x, *self_masks))
        x = self.norm2(x + self._mha_block(x, memory, *memory_masks))
        return self.norm3(x + self._ff_block(x, self.dropout3))

    def _mha_block(self, x, memory, attn_mask, key_padding_mask, is_causal) -> Tensor:
        x = self.multihead_attn(
            x,
            memory,
            memory,
            attn_mask=attn_mask,
            key_padding_mask=key_padding_mask,
            is_causal=is_causal,
            need_weights=False,
        )[0]
        return self.dropout2(x)


def _add_feed_forward(layer: Module, d_model, dim_feedforward, dropout, bias, made) -> None:
    """linear1, dropout and linear2, registered in PyTorch's order (their state_dict keys)."""
    layer.linear1 = Linear(d_model, dim_feedforward, bias=bias, **made)
    layer.dropout = Dropout(dropout)
    layer.linear2 = Linear(dim_feedforward, d_model, bias=bias, **made)


def _clones(layer: Module, num_layers: int) -> ModuleList:
    """Independent copies of ``layer``, as PyTorch's stacks start (all with its values)."""
    return ModuleList([copy.deepcopy(layer) for _ in range(num_layers)])


class TransformerEncoder(Module):
    """``num_layers`` copies of ``encoder_layer`` applied in turn, then ``norm`` if given.

    ``is_causal`` is a hint that ``mask`` is the causal mask; ``enable_nested_tensor`` and
    ``mask_check`` only concern PyTorch's fast path and are kept for the signature.
    """

    def __init__(
        self,
        encoder_layer: TransformerEncoderLayer,
        num_layers: int,
        norm: Module | None = None,
        enable_nested_tensor: bool = True,
        mask_check: bool = True,
    ):
        super().__init__()
        self.layers = _clones(encoder_layer, num_layers)
        self.num_layers, self.norm = num_layers, norm
        self.enable_nested_tensor, self.mask_check = enable_nested_tensor, mask_check

    def forward(
        self, src, mask=None, src_key_padding_mask=None, is_causal: bool | None = None
    ) -> Tensor:
        # An undeclared hint (None) stays off: the mask itself gives the same result.
        output = src
        for layer in self.layers:
            output = layer(
                output,
                src_mask=mask,
                src_key_padding_mask=src_key_padding_mask,
                is_causal=bool(is_causal),
            )
        return self.norm(output) if self.norm is not None else output


class TransformerDecoder(Module):
    """``num_layers`` copies of ``decoder_layer`` applied in turn, then ``norm`` if given."""

    def __init__(self, decoder_layer: TransformerDecoderLayer, num_layers: int, norm=None):
        super().__init__()
        self.layers = _clones(decoder_layer, num_layers)
        self.num_layers, self.norm = num_layers, norm

    def forward(
        self,
        tgt,
        memory,
        tgt_mask=None,
        memory_mask=None,
        tgt_key_padding_mask=None,
        memory_key_padding_mask=None,
        tgt_is_causal: bool | None = None,
        memory_is_causal: bool = False,
    ):
        output = tgt
        for layer in self.layers:
            output = layer(
                output,
                memory,
                tgt_mask=tgt_mask,
                memory_mask=memory_mask,
                tgt_key_padding_mask=tgt_key_padding_mask,
                memory_key_padding_mask=memory_key_padding_mask,
                tgt_is_causal=bool(tgt_is_causal),
                memory_is_causal=memory_is_causal,
            )
        return self.norm(output) if self.norm is not None else output


class Transformer(Module):
    """An encoder stack and a decoder stack, each ending in a LayerNorm (or the custom ones
    given), with PyTorch's Xavier initialisation of every weight matrix."""

    def __init__(
        self,
        d_model: int = 512,
        nhead: int = 8,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        activation=F.relu,
        custom_encoder: Module | None = None,
        custom_decoder: Module | None = None,
        layer_norm_eps: float = 1e-5,
        batch_first: bool = False,
        norm_first: bool = False,
        bias: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        made = {"device": device, "dtype": dtype}
        layer = dict(
            d_model=d_model,
            nhead=nhead,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            activation=activation,
            layer_norm_eps=layer_norm_eps,
            batch_first=batch_first,
            norm_first=norm_first,
            bias=bias,
            **made,
        )
        if custom_encoder is None:
            norm = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **made)
            custom_encoder = TransformerEncoder(
                TransformerEncoderLayer(**layer), num_encoder_layers, norm
            )
        if custom_decoder is None:
            norm = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **made)
            custom_decoder = TransformerDecoder(
                TransformerDecoderLayer(**layer), num_decoder_layers, norm
            )
        self.encoder, self.decoder = custom_encoder, custom_decoder
        self._reset_parameters()
        self.d_model, self.nhead, self.batch_first = d_model, nhead, batch_first

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.ndim > 1:
                init.xavier_uniform_(p)

    def forward(
        self,
        src,
        tgt,
        src_mask=None,
        tgt_mask=None,
        memory_mask=None,
        src_key_padding_mask=None,
        tgt_key_padding_mask=None,
        memory_key_padding_mask=None,
        src_is_causal: bool | None = None,
        tgt_is_causal: bool | None = None,
        memory_is_causal: bool = False,
    ):
        self._check_inputs(src, tgt)
        memory = self.encoder(
            src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal
        )
        return self.decoder(
            tgt,
            memory,
            tgt_mask=tgt_mask,
            memory_mask=memory_mask,
            tgt_key_padding_mask=tgt_key_padding_mask,
            memory_key_padding_mask=memory_key_padding_mask,
            tgt_is_causal=tgt_is_causal,
            memory_is_causal=memory_is_causal,
        )

    def _check_inputs(self, src: Tensor, tgt: Tensor) -> None:
        shapes = f"src {tuple(src.shape)}, tgt {tuple(tgt.shape)}"
        batch = 0 if self.batch_first else 1
        if src.ndim == 3 and (tgt.ndim != 3 or src.shape[batch] != tgt.shape[batch]):
            problem = (
                f"the batch number of src and tgt must be equal (batch_first={self.batch_first})"
            )
        elif src.shape[-1] != self.d_model or tgt.shape[-1] != self.d_model:
            problem = f"the feature number of src and tgt must be equal to d_model={self.d_model}"
        else:
            return
        raise ShapeError(at_user_line(f"Transformer: {problem}, got {shapes}"))

    @staticmethod
    def generate_square_subsequent_mask(sz: int, device=None, dtype=None) -> Tensor:
        """The float (sz, sz) causal mask: -inf above the diagonal, 0 on and below it."""
        dtype = dtypes.to_dtype(dtype) if dtype is not None else dtypes.DEFAULT_FLOAT
        return creation.full((sz, sz), float("-inf"), dtype=dtype, device=device).triu(1)
