"""Sums of scatters at static indices, assembled into one array (canonicalize's
``scatter-sum-assembled`` rule).

A value indexed at many static positions (``projected[t]`` at each step of a recurrent layer,
``unbind``, ``split``, ``chunk``, ``x[:, t]``) gets, in the backward, one ``scatter_add`` per
use: the piece's gradient added into zeros the size of the whole value, and then a sum of all
of them. Pieces that lie side by side along one axis are one concatenation instead (zeros
broadcast into the gaps when they cover part of the axis): one write of the whole value, no
zero-fills, no sums. Pieces at the same place are added first (repeated indices accumulate);
a piece overlapping another only partly stays a scatter, added to the result.

Cost effect: k scatters (each a zero-fill and a write of the whole value) and k - 1 sums of
whole values become one copy of the pieces into the whole (plus sums of repeated pieces, at
their size); a scatter another reader needs is never taken in, so nothing is computed twice.
The memory plan may then write each piece straight into its place in the concatenation
(``tracegrad.passes.memory``'s assemblies).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from tracegrad.ir.core import Value
from tracegrad.passes.patterns import Match


@dataclass(frozen=True)
class Piece:
    """A block of the summed value: rows ``start:stop`` of ``axis``, whole on the other axes,
    holding ``values`` (the gradients scattered there, added) and read by ``scatters``."""

    axis: int
    start: int
    stop: int
    values: tuple[Value, ...]
    scatters: tuple[Value, ...]


def spans(key, shape: tuple[int, ...]) -> list[tuple[int, int]] | None:
    """Per axis of ``shape``, the rows ``[start, stop)`` an index ``key`` (tracegrad.ops.index)
    selects; None unless it selects a block with unit steps (index tensors, strides)."""
    consumed = sum(item[0] in ("int", "slice") for item in key)
    found: list[tuple[int, int]] = []
    for kind, *args in key:
        if kind == "ellipsis":
            found += [(0, n) for n in shape[len(found) : len(found) + len(shape) - consumed]]
        elif kind == "int":
            size = shape[len(found)]
            row = args[0] + size if args[0] < 0 else args[0]
            found.append((row, row + 1))
        elif kind == "slice":
            start, stop, step = slice(*args).indices(shape[len(found)])
            if step != 1:
                return None
            found.append((start, max(start, stop)))
        elif kind != "none":  # an index tensor
            return None
    return found + [(0, n) for n in shape[len(found) :]]


def piece_of(m: Match, value: Value) -> Piece | None:
    """The block ``value`` fills when it is a scatter into zeros, read by nothing else, of a
    non-empty block whole on all axes but one (else None)."""
    node = m.producer(value, "scatter_add")
    if node is None or len(node.inputs) != 1 or not m.only_use(value):
        return None
    shape = tuple(node.attrs["shape"])
    found = spans(node.attrs["key"], shape)
    if found is None:
        return None
    partial = [(axis, span) for axis, span in enumerate(found) if span != (0, shape[axis])]
    if len(partial) != 1 or partial[0][1][0] == partial[0][1][1]:
        return None
    axis, (start, stop) = partial[0]
    return Piece(axis, start, stop, (node.inputs[0],), (value,))


def summands(m: Match, value: Value) -> list[Value]:
    """The values the tree of additions ending at ``value`` sums: it descends into additions
    of its type (no broadcasting) whose results nothing else reads."""
    found, stack = [], [value]
    while stack:
        v = stack.pop()
        node = m.producer(v, "add")
        if (
            node is not None
            and (v is value or m.only_use(v))
            and all(x.type == value.type for x in node.inputs)
        ):
            stack.extend(reversed(node.inputs))
        else:
            found.append(v)
    return found


def is_sum_root(m: Match) -> bool:
    """Whether the rewritten addition is the last of its tree (no addition absorbs it)."""
    out = m.root.outputs[0]
    readers = m.readers(out)
    inner = len(readers) == 1 and m.only_use(out) and readers[0].op == "add"
    return not (inner and all(x.type == out.type for x in readers[0].inputs))


def assembled_sum(m: Match) -> Value | None:
    """The sum at ``m.root`` with its scatters along one axis assembled into one array, plus
    what else it adds; None when fewer than two scatters are taken in."""
    others, by_axis = [], defaultdict(list)
    for value in summands(m, m.root.outputs[0]):
        piece = piece_of(m, value)
        if piece is None:
            others.append(value)
        else:
            by_axis[piece.axis].append(piece)
    if not by_axis:
        return None
    axis = max(by_axis, key=lambda a: len(by_axis[a]))  # (the other axes' pieces stay)
    others += [s for a, pieces in by_axis.items() if a != axis for p in pieces for s in p.scatters]
    placed, overlapping = _disjoint(_repeats_merged(by_axis[axis]))
    if sum(len(p.scatters) for p in placed) < 2:
        return None
    others += [s for p in overlapping for s in p.scatters]
    total = _assembled(m, placed)
    for value in others:
        total = m.emit("add", [total, value])
    return total


def _repeats_merged(pieces: list[Piece]) -> list[Piece]:
    """One piece per block, holding every gradient scattered there (added when built)."""
    merged: dict[tuple[int, int], Piece] = {}
    for p in pieces:
        seen = merged.get((p.start, p.stop))
        if seen is not None:
            p = Piece(p.axis, p.start, p.stop, seen.values + p.values, seen.scatters + p.scatters)
        merged[p.start, p.stop] = p
    return sorted(merged.values(), key=lambda p: (p.start, p.stop))


def _disjoint(pieces: list[Piece]) -> tuple[list[Piece], list[Piece]]:
    """The pieces (in order of start) that overlap none placed before them, and the others."""
    placed, overlapping, end = [], [], 0
    for p in pieces:
        if p.start >= end:
            placed.append(p)
            end = p.stop
        else:
            overlapping.append(p)
    return placed, overlapping


def _assembled(m: Match, pieces: list[Piece]) -> Value:
    """One array of the root's type: the pieces in their blocks, zeros between them."""
    out = m.root.outputs[0].type
    axis = pieces[0].axis

    def block(start: int, stop: int) -> tuple[int, ...]:
        return (*out.shape[:axis], stop - start, *out.shape[axis + 1 :])

    parts, at = [], 0
    for p in pieces:
        if p.start > at:
            parts.append(_zeros(m, block(at, p.start)))
        parts.append(_added(m, p, block(p.start, p.stop)))
        at = p.stop
    if at < out.shape[axis]:
        parts.append(_zeros(m, block(at, out.shape[axis])))
    return parts[0] if len(parts) == 1 else m.emit("cat", parts, dim=axis)


def _added(m: Match, piece: Piece, shape: tuple[int, ...]) -> Value:
    """The sum of a piece's gradients, in its block's shape (an int index keeps its axis)."""
    blocks = [
        v if v.type.shape == shape else m.emit("reshape", [v], shape=shape) for v in piece.values
    ]
    total = blocks[0]
    for block in blocks[1:]:
        total = m.emit("add", [total, block])
    return total


def _zeros(m: Match, shape: tuple[int, ...]) -> Value:
    zero = m.constant(0.0, m.root.outputs[0].type.dtype)
    return m.emit("broadcast_to", [zero], shape=shape)
