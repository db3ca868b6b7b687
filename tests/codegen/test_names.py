"""Names from the user's program reach generated source only escaped: class and function
names, parameter, buffer and submodule names, file names and docstrings holding line breaks,
quotes or code compile and run as in eager mode, and never run as code themselves."""

from __future__ import annotations

import os
import re
import runpy

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tracegrad as tg
from tracegrad import nn, optim
from tracegrad.codegen import names

FLAG = "TRACEGRAD_TEST_PAYLOAD_RAN"
# What each payload tries to run: if it ever does, the environment says so.
STATEMENT = f"__import__('os').environ.__setitem__({FLAG!r}, '1')"
# Every character Python's tokenizer or str.splitlines() ends a line on
BREAKS = ["\n", "\r", "\r\n", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029"]
PAYLOADS = [
    *(f"a{b}{STATEMENT}{b}#" for b in BREAKS),
    f"x'); {STATEMENT}; ('",
    f'x"); {STATEMENT}; ("',
    f'"""\n{STATEMENT}\n"""',
    "\\",
    "a\\",
    "#",
    "{}",
    "{0.__class__}",
    "\x00",
    "\ud800",
    "w\u00b2 \ufb01 \u00e9",
    "a" * 5000,
    "__import__('os')",
    "",
    " ",
    "forward_b0",
    "step_kernel0",
    "np",
    "C",
    "rt",
    "x",
]


@pytest.fixture(autouse=True)
def payload_never_runs():
    os.environ.pop(FLAG, None)
    yield
    assert FLAG not in os.environ, "a name was executed as code"


def type_name(payload: str) -> str:
    """The payload as a class or file name (type() and compile() refuse NUL, type() and
    Python 3.11's linecache lone surrogates)."""
    return payload.replace("\x00", "").encode("utf-8", "replace").decode()


def member_name(payload: str) -> str:
    """The payload as a member name (PyTorch's rules refuse '.' and the empty name)."""
    return payload.replace(".", ",") or "_"


class Net(nn.Module):
    """A linear layer then every parameter and buffer registered on it, multiplied in."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        out = self.lin(x)
        for t in [*self._parameters.values(), *self._buffers.values()]:
            out = out * t
        for m in self._modules.values():
            if m is not self.lin:
                out = m(out)
        return (out * out).sum()


def assert_compiles_like_eager(model):
    """The compiled module gives the eager loss and gradients (float64)."""
    model = model.double()
    x = tg.randn(4, 3).double()
    model(x).backward()
    eager = {n: p.grad.numpy().copy() for n, p in model.named_parameters()}
    expected = model(x).item()
    model.zero_grad()
    compiled = tg.compile(model)
    loss = compiled(x)
    loss.backward()
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-12)
    for n, p in model.named_parameters():
        np.testing.assert_allclose(p.grad.numpy(), eager[n], rtol=1e-10, atol=1e-12)
    return compiled


def with_members(payload: str, how: str) -> nn.Module:
    tg.manual_seed(0)
    model, name = Net(), member_name(payload)
    if how == "register_parameter":
        model.register_parameter(name, nn.Parameter(tg.rand(2) + 0.5))
        model.register_parameter(name + "\ufb01", nn.Parameter(tg.rand(2) + 0.5))
        model.register_parameter(name + "fi", nn.Parameter(tg.rand(2) + 0.5))  # NFKC-equal
    elif how == "setattr":
        setattr(model, name, nn.Parameter(tg.rand(2) + 0.5))
    elif how == "register_buffer":
        model.register_buffer(name, tg.rand(2) + 0.5)
    elif how == "ModuleDict":
        model.blocks = nn.ModuleDict({name: nn.Linear(2, 2), name + "-1": nn.Tanh()})
        model.forward = lambda x: sum(m(model.lin(x)).sum() for m in model.blocks.values())
    return model


def weird_class(payload: str) -> nn.Module:
    name = type_name(payload)
    cls = type(name, (Net,), {"__module__": name, "__qualname__": name})
    cls.__doc__ = payload
    tg.manual_seed(0)
    return cls()


MEMBERS = ["register_parameter", "setattr", "register_buffer", "ModuleDict"]


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("how", MEMBERS)
def test_member_names(payload, how):
    assert_compiles_like_eager(with_members(payload, how))


@pytest.mark.parametrize("payload", PAYLOADS)
def test_class_names_and_docstrings(payload):
    assert_compiles_like_eager(weird_class(payload))


def in_file(filename: str, source: str) -> dict:
    """The namespace of ``source`` compiled as if read from ``filename``: node locations
    carry that name, and the source lines the text."""
    namespace = {"tg": tg, "nn": nn, "optim": optim, "Net": Net}
    exec(compile(source, type_name(filename), "exec"), namespace)
    return namespace


FUNCTIONS = '''
def plain(x):
    """{doc}"""
    return (x * x).sum() * 3  # {doc}

model = Net().double()
opt = optim.SGD(model.parameters(), lr=0.1)

def step(x):
    opt.zero_grad()
    loss = model(x)  # {doc}
    loss.backward()
    opt.step()
    return loss
'''


def functions(payload: str) -> dict:
    tg.manual_seed(0)
    doc = payload.replace("\\", "\\\\").replace('"', '\\"')
    doc = "".join(c if c.isprintable() else repr(c)[1:-1] for c in doc)
    namespace = in_file(payload, FUNCTIONS.replace("{doc}", doc))
    for fn in (namespace["plain"], namespace["step"]):
        fn.__name__ = fn.__qualname__ = payload
        fn.__doc__ = payload
    return namespace


@pytest.mark.parametrize("payload", PAYLOADS)
def test_function_names_file_names_and_docstrings(payload):
    namespace = functions(payload)
    x = tg.randn(4, 3).double()
    plain = tg.compile(namespace["plain"])
    np.testing.assert_allclose(plain(x).item(), namespace["plain"](x).item(), rtol=1e-12)
    model = namespace["model"]
    eager = Net().double()
    eager.load_state_dict(model.state_dict())
    eager_opt = optim.SGD(eager.parameters(), lr=0.1)
    step = tg.compile(namespace["step"])
    for _ in range(2):
        loss = step(x)
        eager_opt.zero_grad()
        expected = eager(x)
        expected.backward()
        eager_opt.step()
        np.testing.assert_allclose(loss.item(), expected.item(), rtol=1e-12)
    for p, q in zip(model.parameters(), eager.parameters(), strict=True):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-12)
    assert step.code.isprintable() is False  # (newlines) but each line is printable:
    assert all(line.isprintable() for line in step.code.split("\n"))


def test_identifiers_are_ascii_unique_and_readable():
    taken = set()
    found = [names.identifier(n, taken) for n in ["model.0.weight", "fi", "\ufb01", "w\u00b2"]]
    assert found == ["model_0_weight", "fi", "_", "w_"]
    assert names.identifier("w\u00b3", taken) == "w__1"
    assert names.identifier("class", taken) == "class_"
    assert names.identifier("0.weight", taken) == "_0_weight"
    assert names.identifier("step_b0", taken, re.compile(r"\w+_b\d")) == "_step_b0"


def test_generated_code_names_parameters_readably():
    tg.manual_seed(0)
    model = Net()
    model.register_parameter("\ufb01", nn.Parameter(tg.ones(2)))
    model.seq = nn.Sequential(nn.Linear(2, 2))
    code = assert_compiles_like_eager(model).code
    assert "forward(x, lin_weight, lin_bias, _, seq_0_weight, seq_0_bias)" in code


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.text(max_size=30),
    st.sampled_from(BREAKS),
    st.text(max_size=30),
    st.sampled_from(["class", *MEMBERS]),
)
def test_random_names(before, brk, after, how):
    payload = f"{before}{brk}{STATEMENT}{brk}{after}"
    model = weird_class(payload) if how == "class" else with_members(payload, how)
    assert_compiles_like_eager(model)
    assert FLAG not in os.environ


@pytest.mark.parametrize("text", [*PAYLOADS, *BREAKS])
def test_comment_and_literal_keep_text_on_one_line(text):
    line = f"x = {names.literal(text)}  # {names.comment(text)}"
    assert len(line.splitlines()) == 1
    namespace = {}
    exec(compile(line, "<test>", "exec"), namespace)
    assert namespace["x"] == text


@pytest.mark.parametrize("payload", [PAYLOADS[0], f'x"); {STATEMENT}; ("', "\u2028\ufb01"])
def test_export_with_awkward_names(payload, tmp_path):
    """A standalone export of a model whose names and file name hold the payload runs (without
    running the payload) and gives the compiled forward's values."""
    model = with_members(payload, "register_parameter").double()
    model.__class__ = type(type_name(payload), (Net,), {})
    compiled = assert_compiles_like_eager(model)
    x = tg.randn(4, 3).double()
    expected = compiled(x).item()
    path = compiled.export(tmp_path / f"m{type_name(payload).replace('/', '|')}.py")
    exported = runpy.run_path(str(path))
    params = list(exported["PARAMETERS"].values())
    np.testing.assert_allclose(exported["forward"](x.numpy(), *params)[0], expected, rtol=1e-12)


def trainer_step():
    """A training step reaching its model through a trainer object that also holds the model
    under a name with braces (the step's guard reads it again to check it is the same)."""

    class Trainer:
        pass

    tg.manual_seed(0)
    trainer = Trainer()
    trainer.model = Net().double()
    trainer.opt = optim.SGD(trainer.model.parameters(), lr=0.01)
    setattr(trainer, "{0.__class__}{", trainer.model)

    def step(x):
        trainer.opt.zero_grad()
        loss = trainer.model(x)
        loss.backward()
        trainer.opt.step()
        return loss

    return step


def test_state_held_under_attribute_names_with_braces():
    eager, compiled, x = trainer_step(), tg.compile(trainer_step()), tg.randn(4, 3).double()
    for _ in range(3):
        np.testing.assert_allclose(compiled(x).item(), eager(x).item(), rtol=1e-12)
    assert len(compiled.specializations) <= 2
