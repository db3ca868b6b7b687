"""Module: the base of layers and models, with PyTorch's registration and traversal API and
its forward and backward hooks."""

from __future__ import annotations

from collections import OrderedDict, namedtuple
from collections.abc import Iterator
from typing import TYPE_CHECKING, ParamSpec, Protocol, TypeVar

import numpy as np

from tracegrad import changes, devices, dtypes, scopes, tape
from tracegrad.autograd import Function
from tracegrad.nn.parameter import Parameter
from tracegrad.tensor import Tensor, active_tracer, wrap

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])

P = ParamSpec("P")
R = TypeVar("R", covariant=True)


class HasForward(Protocol[P, R]):
    """A module as ``__call__`` sees it for type checkers: its forward's arguments and result."""

    def forward(self, *args: P.args, **kwargs: P.kwargs) -> R: ...


def _compiled(value) -> bool:
    """A compiled module (``net.enc = tg.compile(net.enc)``): held as the module it wraps
    is, its parameters and submodules seen through it."""
    return getattr(type(value), "is_compiled_module", False)


class Module:
    """The base of layers and models, as ``torch.nn.Module``: assigning a Parameter or a
    Module to an attribute registers it, and ``parameters()``, ``state_dict()``, ``train()``
    and the rest traverse what is registered.

    Subclasses call ``super().__init__()`` first and define ``forward``; calling the module
    runs ``forward``. Modules compile with ``tg.compile(module)``.

    Examples:
        >>> class TwoLayer(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.hidden = nn.Linear(4, 8)
        ...         self.out = nn.Linear(8, 2)
        ...
        ...     def forward(self, x):
        ...         return self.out(self.hidden(x).relu())
        >>> model = TwoLayer()
        >>> model(tg.zeros(3, 4)).shape, list(model.state_dict())[:2]
        (tracegrad.Size([3, 2]), ['hidden.weight', 'hidden.bias'])
    """

    def __init__(self):
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "training", True)
        for table in _HOOK_TABLES:
            object.__setattr__(self, table, OrderedDict())
        object.__setattr__(self, "_hooks_version", 0)

    def forward(self, *args, **kwargs):
        """The computation of the module; subclasses define it, and calling the module runs it.

        Raises:
            NotImplementedError: if the subclass defines none.
        """
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    if TYPE_CHECKING:  # calling a module returns what its forward returns (Tensor: a layer's)

        def __call__(self: HasForward[P, R], *args: P.args, **kwargs: P.kwargs) -> R: ...

    else:

        def __call__(self, *args, **kwargs):
            tracer = active_tracer()
            if tracer is not None:
                tracer.module_called(self)
            if not scopes.recording():
                return self._run(args, kwargs)
            with scopes.entered(self):  # (the tracer records which module made each op)
                return self._run(args, kwargs)

    def _run(self, args, kwargs):
        if not any(self.__dict__[table] for table in _HOOK_TABLES):
            return self.forward(*args, **kwargs)
        return self._call_with_hooks(args, kwargs)

    # --- hooks ----------------------------------------------------------------------------------
    # Hooks run when the module is called (``module(x)``, not ``module.forward(x)``), in the
    # order registered (``prepend`` puts one first). Registering or removing one recompiles.

    def register_forward_pre_hook(self, hook, *, prepend: bool = False, with_kwargs: bool = False):
        """``hook(module, args)`` (or ``hook(module, args, kwargs)`` with ``with_kwargs``)
        runs before ``forward``; a result that is not None replaces the positional arguments
        (a single value is taken as a 1-tuple), or ``(args, kwargs)`` with ``with_kwargs``.
        Returns a handle whose ``remove()`` takes the hook out.

        Inside ``tg.compile`` forward hooks run while the forward is traced, once per
        specialization: what they do to inputs and outputs is compiled into the graph, their
        other effects (printing, recording) happen at trace time only."""
        return self._add_hook("_forward_pre_hooks", (hook, with_kwargs, False), prepend)

    def register_forward_hook(
        self, hook, *, prepend: bool = False, with_kwargs: bool = False, always_call: bool = False
    ):
        """``hook(module, args, output)`` (or ``hook(module, args, kwargs, output)`` with
        ``with_kwargs``) runs after ``forward``; a result that is not None replaces the output.
        With ``always_call`` it runs even when forward raised. Returns a removable handle.
        Inside ``tg.compile`` it runs while tracing, as a pre-hook does (see there)."""
        return self._add_hook("_forward_hooks", (hook, with_kwargs, always_call), prepend)

    def register_full_backward_hook(self, hook, prepend: bool = False):
        """``hook(module, grad_input, grad_output)`` runs when the gradients with respect to
        the module's positional inputs are computed: ``grad_input`` holds one entry per
        positional argument (None for a non-tensor; zeros for a tensor needing no gradient
        while another does; all None, the hook running right after ``grad_output`` is known,
        when none does), ``grad_output`` one per output tensor, as in PyTorch. A result that
        is not None replaces ``grad_input``. Runs in
        eager backward passes; inside tg.compile it runs while the backward is traced, so
        only a hook that computes new gradients from its arguments has its effect compiled.
        Returns a removable handle."""
        return self._add_hook("_backward_hooks", hook, prepend)

    def register_full_backward_pre_hook(self, hook, prepend: bool = False):
        """``hook(module, grad_output)`` runs when the gradients of the module's outputs are
        known, before those of its inputs are computed; a result that is not None replaces
        ``grad_output`` (full backward hooks then see the new one). Runs as full backward
        hooks do, in eager and compiled backward passes. Returns a removable handle."""
        return self._add_hook("_backward_pre_hooks", hook, prepend)

    def _add_hook(self, table: str, entry, prepend: bool) -> tape.RemovableHandle:
        return tape.RemovableHandle(getattr(self, table), entry, prepend, self._hooks_changed)

    def _hooks_changed(self) -> None:
        # A plain attribute: compiled code guards on it, so a new or removed hook recompiles
        object.__setattr__(self, "_hooks_version", self._hooks_version + 1)
        changes.note()

    def _call_with_hooks(self, args: tuple, kwargs: dict):
        args, kwargs = self._run_pre_hooks(args, kwargs)
        boundary = None
        if (self._backward_hooks or self._backward_pre_hooks) and tape.is_grad_enabled():
            boundary = _BackwardBoundary(self, args)
            args = boundary.inputs()
        try:
            output = self.forward(*args, **kwargs)
        except Exception:
            for hook, with_kwargs, always_call in list(self._forward_hooks.values()):
                if always_call:
                    _call_forward_hook(self, hook, with_kwargs, args, kwargs, None)
            raise
        for hook, with_kwargs, _ in list(self._forward_hooks.values()):
            result = _call_forward_hook(self, hook, with_kwargs, args, kwargs, output)
            output = output if result is None else result
        return boundary.outputs(output) if boundary is not None else output

    def _run_pre_hooks(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        for hook, with_kwargs, _ in list(self._forward_pre_hooks.values()):
            if with_kwargs:
                result = hook(self, args, kwargs)
                if result is not None:
                    args, kwargs = result
            else:
                result = hook(self, args)
                if result is not None:
                    args = result if isinstance(result, tuple) else (result,)
        return args, kwargs

    def share_memory(self) -> Module:
        """PyTorch moves tensors to shared memory for multiprocessing; tracegrad's tensors are
        NumPy arrays on the CPU of one process, so there is nothing to move: returns self."""
        return self

    # --- registration ---------------------------------------------------------------------------

    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(
                f"cannot assign {name!r} before Module.__init__() is called: call "
                "super().__init__() first in your module's __init__"
            )
        if isinstance(value, (Parameter, Module)) or _compiled(value):
            if isinstance(value, Parameter):
                _check_name("parameter", name)
            table = self._parameters if isinstance(value, Parameter) else self._modules
            if name not in table:  # a replacement keeps its place, as in PyTorch
                self._forget(name)
            table[name] = value
        elif name in self._buffers:
            self._buffers[name] = value
        elif name in self._parameters or name in self._modules:
            if value is not None:
                kind = "parameter" if name in self._parameters else "module"
                raise TypeError(
                    f"cannot assign {type(value).__name__} as {kind} {name!r} "
                    f"(nn.Parameter, Module or None expected)"
                )
            (self._parameters if name in self._parameters else self._modules)[name] = None
        else:
            object.__setattr__(self, name, value)
        # A member registered or replaced, the training flag or a plain attribute set: a
        # compiled forward may have read it
        changes.note()

    def _forget(self, name: str) -> None:
        for table in (self._parameters, self._buffers, self._modules):
            table.pop(name, None)
        self.__dict__.pop(name, None)

    def __getattr__(self, name):
        for table in ("_parameters", "_buffers", "_modules"):
            values = self.__dict__.get(table)
            if values is not None and name in values:
                return values[name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name):
        for table in (self._parameters, self._buffers, self._modules):
            if name in table:
                del table[name]
                changes.note()
                return
        object.__delattr__(self, name)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        """Register ``param`` (or None) under ``name``, as assigning a Parameter attribute does."""
        _check_name("parameter", name)
        self._parameters[name] = param
        changes.note()

    def register_buffer(self, name: str, tensor: Tensor | None, persistent: bool = True) -> None:
        """Register a tensor that is state but not a parameter (running statistics, masks).

        Args:
            name: the attribute name.
            tensor: the tensor, or None.
            persistent: whether ``state_dict()`` includes it.

        Examples:
            >>> m = nn.Module()
            >>> m.register_buffer("count", tg.zeros(1))
            >>> list(m.state_dict())
            ['count']
        """
        _check_name("buffer", name)
        if name not in self._buffers and (hasattr(self, name) or name in self._modules):
            raise KeyError(f"attribute '{name}' already exists")
        self._buffers[name] = tensor
        changes.note()
        if persistent:
            self._non_persistent.discard(name)  # re-registering can make a buffer persistent
        else:
            self._non_persistent.add(name)

    def add_module(self, name: str, module: Module | None) -> None:
        """Register a submodule (or None) under ``name``, as assigning a Module attribute does."""
        _check_name("module", name)
        self._modules[name] = module
        changes.note()

    register_module = add_module

    # --- traversal ------------------------------------------------------------------------------

    def named_modules(self, memo=None, prefix: str = "") -> Iterator[tuple[str, Module]]:
        """This module and every module under it, once each, with dotted names ("" for itself)."""
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, module in self._modules.items():
            if module is not None:
                yield from module.named_modules(memo, f"{prefix}.{name}" if prefix else name)

    def modules(self) -> Iterator[Module]:
        """This module and every module under it, once each."""
        for _, module in self.named_modules():
            yield module

    def named_children(self) -> Iterator[tuple[str, Module]]:
        """The direct submodules with their names."""
        for name, module in self._modules.items():
            if module is not None:
                yield name, module

    def children(self) -> Iterator[Module]:
        """The direct submodules."""
        for _, module in self.named_children():
            yield module

    def _named_members(self, table: str, recurse: bool):
        seen = set()
        modules = self.named_modules() if recurse else [("", self)]
        for prefix, module in modules:
            for name, value in getattr(module, table).items():
                if value is None or id(value) in seen:
                    continue
                seen.add(id(value))
                yield (f"{prefix}.{name}" if prefix else name), value

    def named_parameters(self, prefix: str = "", recurse: bool = True):
        """The parameters of this module and (with ``recurse``) its submodules, by dotted name.

        Args:
            prefix: prepended to every name.
            recurse: include submodules' parameters.

        Examples:
            >>> [name for name, _ in nn.Sequential(nn.Linear(2, 2)).named_parameters()]
            ['0.weight', '0.bias']
        """
        for name, p in self._named_members("_parameters", recurse):
            yield (f"{prefix}.{name}" if prefix else name), p

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        """The parameters of this module and (with ``recurse``) its submodules, each once.

        Examples:
            >>> sum(p.numel() for p in nn.Linear(3, 2).parameters())
            8
        """
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True):
        """The buffers of this module and (with ``recurse``) its submodules, by dotted name."""
        for name, b in self._named_members("_buffers", recurse):
            yield (f"{prefix}.{name}" if prefix else name), b

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        """The buffers of this module and (with ``recurse``) its submodules."""
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    # --- modes and gradients --------------------------------------------------------------------

    def train(self, mode: bool = True) -> Module:
        """Set training mode (``mode=True``) or eval mode on this module and its submodules.

        Returns:
            This module.

        Examples:
            >>> nn.Dropout().train(False).training
            False
        """
        for module in self.modules():
            object.__setattr__(module, "training", mode)
        changes.note()
        return self

    def eval(self) -> Module:
        """Set eval mode (``train(False)``): dropout off, batch norm using running statistics.

        Returns:
            This module.
        """
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        """Set ``requires_grad`` on every parameter; returns this module."""
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset every parameter's gradient: to None (``set_to_none``, the default) or to zeros.

        Examples:
            >>> layer = nn.Linear(2, 1)
            >>> layer(tg.ones(1, 2)).sum().backward()
            >>> layer.zero_grad()
            >>> layer.weight.grad is None
            True
        """
        for p in self.parameters():
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad = wrap(np.zeros_like(p.grad.array))

    def apply(self, fn) -> Module:
        """Call ``fn`` on every submodule and then on this module (to initialise weights, say).

        Returns:
            This module.
        """
        for module in self.children():
            module.apply(fn)
        fn(self)
        return self

    # --- state ----------------------------------------------------------------------------------

    def state_dict(self, destination=None, prefix: str = "", keep_vars: bool = False):
        """Parameters and persistent buffers by dotted name, sharing memory with the module.

        As in PyTorch, a module or tensor reachable under several names is listed under each,
        so a state dict of a model with shared layers loads into an unshared copy of it.
        """
        out = OrderedDict() if destination is None else destination
        for name, p in self._parameters.items():
            if p is not None:
                out[prefix + name] = p if keep_vars else p.detach()
        for name, b in self._buffers.items():
            if b is not None and name not in self._non_persistent:
                out[prefix + name] = b if keep_vars else b.detach()
        for name, module in self._modules.items():
            if module is not None:
                module.state_dict(out, f"{prefix}{name}.", keep_vars)
        return out

    def load_state_dict(self, state_dict, strict: bool = True):
        """Copy values in place; returns the (missing_keys, unexpected_keys) named tuple.

        Every check runs before anything is copied, so a failed load leaves the module as it
        was. Missing or unexpected keys (with ``strict``) and shape mismatches raise
        RuntimeError, as in PyTorch.
        """
        own = self.state_dict(keep_vars=True)
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        errors = []
        if strict and unexpected:
            errors.append(f"Unexpected key(s) in state_dict: {', '.join(unexpected)}.")
        if strict and missing:
            errors.append(f"Missing key(s) in state_dict: {', '.join(missing)}.")
        values = {}
        for name, target in own.items():
            if name not in state_dict:
                continue
            value = state_dict[name]
            value = value.detach().array if isinstance(value, Tensor) else np.asarray(value)
            if value.shape != tuple(target.shape):
                errors.append(
                    f"size mismatch for {name}: copying a param with shape {value.shape} from "
                    f"checkpoint, the shape in current model is {tuple(target.shape)}."
                )
            values[name] = value
        if errors:
            raise RuntimeError(
                f"Error(s) in loading state_dict for {type(self).__name__}:\n\t"
                + "\n\t".join(errors)
            )
        for name, value in values.items():
            np.copyto(own[name].array, value, casting="unsafe")
            own[name].bump_version()
        return IncompatibleKeys(missing, unexpected)

    def to(self, *args, **kwargs) -> Module:
        """Convert floating-point parameters and buffers to a dtype; the CPU is the only device."""
        dtype = dtypes.requested(*devices.without_devices(args, kwargs))
        if dtype is None:
            return self
        for t in [*self.parameters(), *self.buffers()]:
            if t.dtype.is_floating_point:
                t.array = t.array.astype(dtype.np)
                if t.grad is not None:
                    t.grad = t.grad.to(dtype)
        return self

    def double(self) -> Module:
        """Convert floating-point parameters and buffers to float64; returns this module."""
        return self.to(dtypes.float64)

    def float(self) -> Module:
        """Convert floating-point parameters and buffers to float32; returns this module."""
        return self.to(dtypes.float32)

    def cpu(self) -> Module:
        """This module (the CPU is the only device)."""
        return self

    def cuda(self, device=None) -> Module:
        """Always raises: tracegrad runs on the CPU only.

        Raises:
            RuntimeError: naming the device.
        """
        raise devices.unavailable("cuda" if device is None else device)

    # --- printing -------------------------------------------------------------------------------

    def extra_repr(self) -> str:
        """The text inside this module's ``repr`` parentheses; layers override it."""
        return ""

    def __repr__(self) -> str:
        lines = [f"({name}): " + repr(m).replace("\n", "\n  ") for name, m in self.named_children()]
        head = f"{type(self).__name__}({self.extra_repr()}"
        if not lines:
            return head + ")"
        return head + "\n  " + "\n  ".join(lines) + "\n)"


_HOOK_TABLES = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")


def _call_forward_hook(module, hook, with_kwargs, args, kwargs, output):
    if with_kwargs:
        return hook(module, args, kwargs, output)
    return hook(module, args, output)


class _BackwardBoundary:
    """Identity functions around one call of a module with full backward hooks: the one on
    its outputs records their gradients, the one on its inputs calls the hooks with the
    gradients of the inputs and those of the outputs, as PyTorch's BackwardHook does."""

    def __init__(self, module: Module, args: tuple):
        self.module, self.args = module, args
        self.grad_outputs: tuple | None = None
        # Every tensor argument, when one needs a gradient (the others get zeros, as in PyTorch)
        tensors = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
        needed = any(args[i].requires_grad for i in tensors)
        self.positions = tensors if needed else []

    def inputs(self) -> tuple:
        if not self.positions:
            return self.args
        marked = _Identity.apply(self._after_inputs, *(self.args[i] for i in self.positions))
        marked = marked if isinstance(marked, tuple) else (marked,)
        args = list(self.args)
        for i, tensor in zip(self.positions, marked, strict=True):
            args[i] = tensor
        return tuple(args)

    def outputs(self, output):
        many = isinstance(output, (tuple, list))
        items = list(output) if many else [output]
        places = [i for i, o in enumerate(items) if isinstance(o, Tensor) and o.requires_grad]
        if not places:
            return output
        marked = _Identity.apply(self._after_outputs, *(items[i] for i in places))
        marked = marked if isinstance(marked, tuple) else (marked,)
        for i, tensor in zip(places, marked, strict=True):
            items[i] = tensor
        return type(output)(items) if many else items[0]

    def _after_outputs(self, grads: tuple) -> tuple:
        for hook in list(self.module._backward_pre_hooks.values()):
            result = hook(self.module, grads)
            if result is not None:
                grads = _same_count(self.module, "pre-hook", result, len(grads), "output")
        self.grad_outputs = grads
        if not self.positions:  # no input needs a gradient: the hooks run now, as PyTorch's
            self._run_hooks((None,) * len(self.args))
        return grads

    def _after_inputs(self, grads: tuple) -> tuple:
        grad_input: list[Tensor | None] = [None] * len(self.args)
        for i, g in zip(self.positions, grads, strict=True):
            grad_input[i] = g
        hooked = self._run_hooks(tuple(grad_input))
        return tuple(hooked[i] for i in self.positions)

    def _run_hooks(self, grad_input: tuple) -> tuple:
        for hook in list(self.module._backward_hooks.values()):
            result = hook(self.module, grad_input, self.grad_outputs)
            if result is None:
                continue
            result = _same_count(self.module, "hook", result, len(grad_input), "input")
            if not self.positions and any(g is not None for g in result):
                raise RuntimeError(
                    f"backward hook of {type(self.module).__name__}: no input requires a "
                    "gradient, so the hook should return None (or None for every gradient)"
                )
            grad_input = result
        return grad_input


def _same_count(module: Module, kind: str, result, count: int, what: str) -> tuple:
    """A backward hook's result as a tuple of as many gradients as it replaces."""
    result = tuple(result) if isinstance(result, (tuple, list)) else (result,)
    if len(result) != count:
        raise RuntimeError(
            f"backward {kind} of {type(module).__name__} returned {len(result)} gradients, "
            f"expected {count} (one per {what})"
        )
    return result


class _Identity(Function):
    """Passes tensors through; its backward hands their gradients to ``after`` and returns
    what it gives back. Tensors that need no gradient stay so (and get zeros)."""

    @staticmethod
    def forward(ctx, after, *tensors):
        ctx.after = after
        outputs = tuple(t.detach() for t in tensors)
        ctx.mark_non_differentiable(*(o for o, t in zip(outputs, tensors) if not t.requires_grad))
        return outputs if len(outputs) > 1 else outputs[0]

    @staticmethod
    def backward(ctx, *grads):
        return (None, *ctx.after(grads))


def _check_name(kind: str, name) -> None:
    """PyTorch's rules for a member's name: a string, not empty (it would make the dotted
    names of state_dict ambiguous) and without a dot (it would read as a submodule's)."""
    if not isinstance(name, str):
        raise TypeError(f"{kind} name should be a string. Got {type(name).__name__}")
    if not name:
        raise KeyError(f'{kind} name can\'t be empty string ""')
    if "." in name:
        raise KeyError(f'{kind} name can\'t contain "."')
