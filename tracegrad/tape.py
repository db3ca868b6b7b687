"""The eager tape: grad mode, recorded nodes and the reverse-mode backward engine.

This module knows tensors only through their attributes (``grad_fn``, ``requires_grad``,
``grad``, ``shape``...) so it sits below ``tracegrad.tensor``; ``tracegrad.autograd`` exposes it.
The engine is one generic loop: visit nodes in reverse topological order, ask each node for the
cotangents of its inputs, sum them back to each input's shape, accumulate. A leaf's gradient is
accumulated as soon as its last edge is done, and its post-accumulate hooks run then (data
parallelism starts averaging there); callbacks queued during a pass run at its end.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections import OrderedDict

import numpy as np


class _ThreadState(threading.local):
    """Per thread: grad mode, the node whose backward is running (for create_graph), and the
    callbacks queued for the end of the running backward pass."""

    grad_enabled = True
    backward_node: Node | None = None
    final_callbacks: list  # set per thread in __init__

    def __init__(self):
        self.final_callbacks = []


thread_state = _ThreadState()


def is_grad_enabled() -> bool:
    """Whether operations are recorded for autograd in this thread.

    Examples:
        >>> with tg.no_grad():
        ...     tg.is_grad_enabled()
        False
    """
    return thread_state.grad_enabled


class _GradMode:
    """Sets grad mode on entry and restores the previous one on exit; as a decorator, around
    each call. ``@no_grad`` works without parentheses too, as in PyTorch."""

    mode: bool | None = True  # None: leave the grad mode as it is

    def __new__(cls, fn=None, /, **kwargs):
        if fn is None or not callable(fn):  # no_grad(), or set_grad_enabled(False)
            return object.__new__(cls)
        return cls()(fn)  # used as @no_grad

    def __enter__(self):
        self.previous = is_grad_enabled()
        if self.mode is not None:
            thread_state.grad_enabled = self.mode
        return self

    def __exit__(self, *exc):
        thread_state.grad_enabled = self.previous
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self._clone():  # a fresh context per call: calls may nest or run in threads
                return fn(*args, **kwargs)

        return wrapper

    def _clone(self):
        return type(self)()


class no_grad(_GradMode):  # noqa: N801  (PyTorch's name)
    """Turn gradient recording off in a ``with`` block or a decorated function.

    Examples:
        >>> w = tg.ones(2, requires_grad=True)
        >>> with tg.no_grad():
        ...     y = w * 2
        >>> y.requires_grad
        False
    """

    mode = False


class enable_grad(_GradMode):  # noqa: N801
    """Turn gradient recording on in a ``with`` block or a decorated function (inside
    ``no_grad``, say)."""

    mode = True


class inference_mode(_GradMode):  # noqa: N801
    """``inference_mode()`` is ``no_grad()`` here (tracegrad has no inference tensors);
    ``inference_mode(False)`` leaves the grad mode as it is, as in PyTorch."""

    def __init__(self, mode: bool = True):
        self.mode = False if mode else None
        self.enabled = bool(mode)

    def _clone(self):
        return type(self)(self.enabled)


class set_grad_enabled(_GradMode):  # noqa: N801
    """``set_grad_enabled(False)`` turns gradients off at once; used as a context manager (or
    decorator) it also restores the mode that was set before it when the block ends."""

    def __init__(self, mode: bool):
        self.mode = bool(mode)
        self.before = is_grad_enabled()
        thread_state.grad_enabled = self.mode

    def __call__(self, fn):
        thread_state.grad_enabled = self.before  # decorating sets nothing until a call
        return super().__call__(fn)

    def __exit__(self, *exc):
        thread_state.grad_enabled = self.before
        return False

    def _clone(self):
        return type(self)(self.mode)


_node_serials = itertools.count()


class Node:
    """One recorded application of an op or a custom Function.

    ``inputs`` are the tensors it consumed (its edges to earlier nodes); ``backward_fn(grads)``
    maps one cotangent per output to one per input; ``saved`` lists (description, tensor,
    version) for the values the backward reads, checked before it runs.
    """

    __slots__ = (
        "__weakref__",  # a compiled module watches whether its last graph is still pending
        "backward_fn",
        "edges",
        "freed",
        "inputs",
        "location",
        "n_outputs",
        "name",
        "retained",
        "saved",
        "scope",
        "serial",
    )

    def __init__(self, name, inputs, backward_fn, n_outputs=1):
        self.name = name
        self.inputs = tuple(inputs)
        # Where each input's value came from when it was consumed: a later in-place op gives
        # the tensor a new history, but this node's gradient still flows to the old one.
        self.edges = tuple(_edge(t) for t in self.inputs)
        self.backward_fn = backward_fn
        self.n_outputs = n_outputs
        self.saved: list = []
        self.freed = False
        self.retained: dict = {}
        self.location = None  # the user's source line, when recorded while tracing
        self.scope = None  # the module call that made it, when recorded while tracing
        self.serial = next(_node_serials)  # creation order: consumers come after producers

    def save(self, description: str, tensor) -> None:
        self.saved.append((description, tensor, tensor.version))

    def check_saved(self) -> None:
        if self.freed:
            raise RuntimeError(
                f"Trying to backward through the graph a second time (through '{self.name}'), "
                "but its saved values have already been freed. Specify retain_graph=True on the "
                "first backward() or autograd.grad() call if you need to backward twice."
            )
        for description, tensor, version in self.saved:
            if tensor.version != version:
                raise RuntimeError(
                    "one of the variables needed for gradient computation has been modified by "
                    f"an inplace operation: the {description} of '{self.name}' is at version "
                    f"{tensor.version}; expected version {version} instead."
                )

    def __repr__(self) -> str:
        camel = self.name
        if camel.islower():
            camel = "".join(part.capitalize() for part in camel.split("_"))
        return f"<{camel}Backward>"


def current_backward() -> Node | None:
    """The node whose backward is running (tracing names gradient ops after it)."""
    return thread_state.backward_node


def _topological_nodes(roots) -> list[Node]:
    """Nodes reachable from ``roots``, each after every node that consumes its outputs."""
    order, seen = [], set()
    stack = [(node, False) for node in roots]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        stack.append((node, True))
        stack.extend((edge[0], False) for edge in node.edges if isinstance(edge, tuple))
    return order[::-1]


def _fit(grad, like):
    """Sum a broadcast cotangent back to ``like``'s shape and give it ``like``'s dtype."""
    a, b = grad.array, like.array
    arrays = type(a) is np.ndarray and type(b) is np.ndarray
    if arrays and a.shape == b.shape and a.dtype == b.dtype:
        return grad  # the usual case, read off the arrays
    if tuple(grad.shape) != tuple(like.shape):
        grad = grad.sum_to(like.shape)
    if grad.dtype != like.dtype:
        grad = grad.to(like.dtype)
    return grad


def _add(total, grad):
    return grad if total is None else total + grad


def run_backward(outputs, grads, *, retain_graph, create_graph, capture=None):
    """Propagate ``grads`` (one per output tensor) back through the tape.

    Without ``capture``, gradients of leaves that require grad accumulate into ``.grad``.
    With ``capture`` (a list of tensors), nothing is accumulated and the gradient reaching each
    captured tensor is returned instead (None where none arrives), as ``autograd.grad`` needs.
    """
    pending: dict = {}  # (id(node), output index) or id(leaf) -> summed cotangent
    leaves: dict = {}
    for out, grad in zip(outputs, grads, strict=True):
        key = (id(out.grad_fn), out._out_index) if out.grad_fn is not None else id(out)
        pending[key] = _add(pending.get(key), grad)
        if out.grad_fn is None:
            leaves[id(out)] = out
    wanted = {_key(t): t for t in capture} if capture is not None else {}
    captured: dict = {}
    nodes = _topological_nodes([o.grad_fn for o in outputs if o.grad_fn is not None])
    if capture is not None:
        nodes = _leading_to(nodes, wanted)  # like PyTorch: only what the inputs need
    else:  # latest first, as PyTorch: a layer's weights finish before earlier layers start
        nodes.sort(key=lambda node: node.serial, reverse=True)
    remaining = _leaf_uses(nodes)
    with enable_grad() if create_graph else no_grad():
        for node in nodes:
            out_grads = [pending.pop((id(node), i), None) for i in range(node.n_outputs)]
            for i, grad in enumerate(out_grads):
                if (id(node), i) in wanted:
                    captured[(id(node), i)] = grad
                retained = node.retained.get(i)
                if retained is not None and retained() is not None and grad is not None:
                    retained().grad = grad if create_graph else grad.detach()
            if any(g is not None for g in out_grads):
                _run_node(node, out_grads, pending, leaves, retain_graph)
            if capture is None:
                _accumulate_finished_leaves(node, remaining, pending, leaves, create_graph)
    for key, leaf in leaves.items():
        grad = pending.get(key)
        if key in wanted:
            captured[key] = grad
        elif capture is None and grad is not None and leaf.requires_grad:
            accumulate(leaf, grad, create_graph)
    if capture is None:
        _run_final_callbacks()
        return None
    for key in wanted:  # wanted values whose producers did not need to run
        captured.setdefault(key, pending.get(key))
    return [captured.get(_key(t)) for t in capture]


def _run_node(node, out_grads, pending, leaves, retain_graph) -> None:
    node.check_saved()
    outer, thread_state.backward_node = current_backward(), node
    try:
        _route(node, node.backward_fn(out_grads), pending, leaves)
    finally:
        thread_state.backward_node = outer
    if not retain_graph:
        node.freed = True


def _leaf_uses(nodes: list[Node]) -> dict[int, int]:
    """How many edges of ``nodes`` lead to each leaf."""
    uses: dict[int, int] = {}
    for node in nodes:
        for edge in node.edges:
            if not isinstance(edge, tuple):
                uses[id(edge)] = uses.get(id(edge), 0) + 1
    return uses


def _accumulate_finished_leaves(node, remaining, pending, leaves, create_graph) -> None:
    """Accumulate the gradient of each leaf that no later node can add to, as soon as the last
    edge to it is done, so that post-accumulate hooks (data parallelism's bucket allreduces)
    start while the rest of the backward still runs."""
    for edge in node.edges:
        if isinstance(edge, tuple):
            continue
        key = id(edge)
        remaining[key] -= 1
        if remaining[key] == 0 and key in leaves and edge.requires_grad:
            del leaves[key]
            accumulate(edge, pending.pop(key), create_graph)


def _leading_to(nodes: list[Node], wanted: dict) -> list[Node]:
    """The nodes (in the given order) from which some wanted tensor can be reached."""
    needed: set[int] = set()
    for node in reversed(nodes):  # consumers come first in ``nodes``, so walk producers first
        for edge in node.edges:
            if isinstance(edge, tuple):
                reaches = (id(edge[0]), edge[1]) in wanted or id(edge[0]) in needed
            else:
                reaches = id(edge) in wanted
            if reaches:
                needed.add(id(node))
                break
    return [n for n in nodes if id(n) in needed]


def _edge(t):
    """A node output as (node, index), or the leaf tensor itself."""
    return (t.grad_fn, t._out_index) if t.grad_fn is not None else t


def _key(t):
    return (id(t.grad_fn), t._out_index) if t.grad_fn is not None else id(t)


def _route(node, in_grads, pending, leaves) -> None:
    for tensor, edge, grad in zip(node.inputs, node.edges, in_grads, strict=True):
        if grad is None or not (isinstance(edge, tuple) or edge.requires_grad):
            continue
        grad = _fit(grad, tensor)
        key = (id(edge[0]), edge[1]) if isinstance(edge, tuple) else id(edge)
        pending[key] = _add(pending.get(key), grad)
        if not isinstance(edge, tuple):
            leaves[key] = edge


def mark_unshared(tensor) -> None:
    """Mark a gradient tensor whose array no one else holds (a compiled backward's fresh
    result): its first accumulation takes the array as the leaf's .grad instead of copying
    it, as PyTorch's AccumulateGrad steals a gradient nothing else references."""
    tensor._unshared = True


def _accumulates_in_place(existing, grad) -> bool:
    """Whether ``existing`` (a .grad) can take ``grad`` in place: of its dtype, and writable
    (a broadcast view a user set is not; a traced value always is)."""
    flags = getattr(existing.array, "flags", None)
    return existing.dtype == grad.dtype and (flags is None or flags.writeable)


def accumulate(leaf, grad, create_graph) -> None:
    unshared = grad.__dict__.pop("_unshared", False)
    if not create_graph and (grad.grad_fn is not None or grad._requires_grad):
        grad = grad.detach()
    if leaf.grad is None:
        leaf.grad = grad if create_graph or unshared else grad.clone()
    elif create_graph or not _accumulates_in_place(leaf.grad, grad):
        leaf.grad = leaf.grad + grad
    else:  # in place, as PyTorch's AccumulateGrad: a .grad that is a view keeps receiving
        with no_grad():
            leaf.grad.add_(grad)
    for hook in leaf.__dict__.get("_post_accumulate_grad_hooks", {}).values():
        hook(leaf)


class RemovableHandle:
    """What ``register_*_hook`` returns: it keeps one hook in a table of hooks (first, with
    ``prepend``); ``remove()`` takes it out (a second call does nothing) and tells
    ``on_change``, as adding it did; as a context manager it removes the hook on exit."""

    _ids = itertools.count(1)

    def __init__(self, hooks: OrderedDict, hook, prepend: bool = False, on_change=None):
        self.id, self.hooks, self.on_change = next(RemovableHandle._ids), hooks, on_change
        hooks[self.id] = hook
        if prepend:
            hooks.move_to_end(self.id, last=False)
        self._changed()

    def remove(self) -> None:
        if self.hooks.pop(self.id, None) is not None:
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def __enter__(self) -> RemovableHandle:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def queue_callback(callback) -> None:
    """Run ``callback()`` once when the running backward pass has accumulated every gradient
    (PyTorch's ``Variable._execution_engine.queue_callback``; data parallelism waits on its
    gradient averaging there, before backward() returns)."""
    thread_state.final_callbacks.append(callback)


def _run_final_callbacks() -> None:
    callbacks, thread_state.final_callbacks = thread_state.final_callbacks, []
    for callback in callbacks:
        callback()
