"""The einsum forms beyond the ``einsum`` op's plain equations, rewritten into them:

- the sublist form ``einsum(a, [0, 1], b, [1, 2], [0, 2])`` (ints for letters, ``...``);
- ``...`` for leading dims, broadcast between operands (size 1 against size n) as NumPy does;
- a subscript repeated within one operand (``"ii->i"``, ``"ii"``): that operand's diagonal,
  taken first, so ``einsum("ii", x)`` is the trace.

``plain_einsum(args)`` returns the plain equation and the operands to give the op.
"""

from __future__ import annotations

from tracegrad.errors import ShapeError, at_user_line
from tracegrad.tensor.core import as_tensor

LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def plain_einsum(args) -> tuple[str, list]:
    """(equation without ``...`` or repeated subscripts, operands) for ``einsum(*args)``."""
    equation, operands = _equation_form(args)
    lhs, arrow, rhs = equation.replace(" ", "").partition("->")
    ins = lhs.split(",")
    if len(ins) != len(operands):
        raise ShapeError(
            at_user_line(f"einsum: {equation!r} names {len(ins)} operands, got {len(operands)}")
        )
    operands = [as_tensor(x) for x in operands]
    ins, operands, spread = _expand_ellipsis(ins, operands, set(equation))
    if arrow:
        out = rhs.replace("...", spread)
    else:
        letters = "".join(ins)
        out = spread + "".join(
            sorted(ch for ch in set(letters) - set(spread) if letters.count(ch) == 1)
        )
    plain_ins, plain_operands = zip(
        *(_diagonals(subs, x) for subs, x in zip(ins, operands, strict=True)), strict=True
    )
    return ",".join(plain_ins) + "->" + out, list(plain_operands)


def _equation_form(args) -> tuple[str, list]:
    """(equation, operands) from either form of the arguments."""
    if isinstance(args[0], str):
        operands = args[1:]
        if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
            operands = operands[0]
        return args[0], list(operands)
    arrow = "->" + _letters(args[-1]) if len(args) % 2 else ""
    pairs = args[: len(args) - len(args) % 2]
    subscripts = ",".join(_letters(s) for s in pairs[1::2])
    return subscripts + arrow, list(pairs[0::2])


def _letters(sublist) -> str:
    return "".join("..." if s is Ellipsis else LETTERS[s] for s in sublist)


def _expand_ellipsis(ins, operands, used):
    """Each ``...`` replaced by letters of its own, the same trailing ones for every operand
    (right-aligned, as broadcasting is), size-1 dims broadcast to the others' sizes."""
    counts = [
        x.ndim - (len(s) - 3) if "..." in s else 0 for s, x in zip(ins, operands, strict=True)
    ]
    free = [ch for ch in LETTERS if ch not in used]
    spread = "".join(free[: max(counts, default=0)])
    ins = [s.replace("...", spread[len(spread) - n :]) for s, n in zip(ins, counts, strict=True)]
    sizes = {}
    for subs, x in zip(ins, operands, strict=True):
        for ch, n in zip(subs, x.shape, strict=False):
            if ch in spread and n != 1:
                sizes[ch] = n
    operands = [
        x.expand(
            [sizes.get(ch, n) if ch in spread else n for ch, n in zip(subs, x.shape, strict=False)]
        )
        if len(subs) == x.ndim
        else x
        for subs, x in zip(ins, operands, strict=True)
    ]
    return ins, operands, spread


def _diagonals(subs: str, x):
    """(subscripts, operand) with every repeated subscript's diagonal taken (put last)."""
    while len(set(subs)) < len(subs):
        ch = next(c for c in subs if subs.count(c) > 1)
        first, second = subs.index(ch), subs.index(ch, subs.index(ch) + 1)
        x = x.diagonal(0, first, second)
        subs = "".join(c for i, c in enumerate(subs) if i not in (first, second)) + ch
    return subs, x
