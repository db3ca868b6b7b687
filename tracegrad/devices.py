"""Devices: tracegrad runs on the CPU, so ``device("cpu")`` is the only one there is.

Programs written for PyTorch pass devices everywhere (factories, ``.to(device)``, layers'
``device=``); the CPU is accepted wherever they do, and any other device raises at once, naming
it, rather than running somewhere the program did not ask for.
"""

from __future__ import annotations

from tracegrad.errors import at_user_line

# PyTorch's device types, so that a real device gets "CPU only" and a typo gets "unknown".
_OTHER_TYPES = frozenset(
    (
        "cuda",
        "ipu",
        "xpu",
        "mkldnn",
        "opengl",
        "opencl",
        "ideep",
        "hip",
        "ve",
        "fpga",
        "maia",
        "xla",
        "lazy",
        "vulkan",
        "mps",
        "meta",
        "hpu",
        "mtia",
        "privateuseone",
    )
)


class device:  # noqa: N801  (PyTorch's name)
    """``tg.device("cpu")``, ``tg.device("cpu:0")`` or ``tg.device("cpu", 0)``.

    Raises:
        RuntimeError: for any device but the CPU, naming it.

    Examples:
        >>> tg.zeros(2, device=tg.device("cpu")).device
        device(type='cpu')
    """

    __slots__ = ("index",)

    def __init__(self, spec, index: int | None = None):
        if isinstance(spec, device):
            spec, index = "cpu", spec.index if index is None else index
        kind, index = _parse(spec, index)
        if kind != "cpu":
            raise unavailable(spec, index)
        self.index = index

    @property
    def type(self) -> str:
        return "cpu"

    def __eq__(self, other) -> bool:
        return isinstance(other, device) and other.index == self.index

    def __hash__(self) -> int:
        return hash(("cpu", self.index))

    def __str__(self) -> str:
        return "cpu" if self.index is None else f"cpu:{self.index}"

    def __repr__(self) -> str:
        index = "" if self.index is None else f", index={self.index}"
        return f"device(type='cpu'{index})"


def _parse(spec, index) -> tuple[str, int | None]:
    if isinstance(spec, int) and not isinstance(spec, bool):  # PyTorch: an ordinal is CUDA's
        return "cuda", spec
    if not isinstance(spec, str):
        raise TypeError(f"a device is a string such as 'cpu' or a tg.device, got {spec!r}")
    kind, _, ordinal = spec.partition(":")
    if kind != "cpu" and kind not in _OTHER_TYPES:
        raise RuntimeError(
            at_user_line(f"unknown device {spec!r}: tracegrad runs on the CPU only, use 'cpu'")
        )
    if ordinal:
        if not ordinal.isdigit() or index is not None:
            raise RuntimeError(at_user_line(f"invalid device string {spec!r}"))
        index = int(ordinal)
    return kind, index


def unavailable(spec="cuda", index: int | None = None) -> RuntimeError:
    """The error for a device other than the CPU (``.cuda()`` raises it as it is)."""
    if isinstance(spec, int):
        spec, index = "cuda", spec
    spelled = spec if index is None or ":" in spec else f"{spec}:{index}"
    return RuntimeError(
        at_user_line(
            f"device {spelled!r} is not available: tracegrad runs on the CPU only; "
            "use device='cpu' (or leave the device out)"
        )
    )


CPU = device("cpu")


def check(spec) -> None:
    """Accept None or a CPU device, as a ``device=`` argument; raise for any other."""
    if spec is not None:
        device(spec)


def is_device(value) -> bool:
    """Whether a positional argument of ``to(...)`` names a device (rather than a dtype)."""
    return isinstance(value, (str, device))


def without_devices(args, kwargs) -> tuple[tuple, dict]:
    """``to(...)``'s arguments with the devices checked and taken out (dtypes remain)."""
    check(kwargs.get("device"))
    for arg in args:
        if is_device(arg):
            check(arg)
    rest = {k: v for k, v in kwargs.items() if k != "device"}
    return tuple(a for a in args if not is_device(a)), rest
