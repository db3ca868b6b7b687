"""Types as a user's type checker sees them.

The one-op Tensor methods and the module-level functions are made at import time; their
declarations for type checkers (tensor/signatures.py, the end of functions.py) must name the
same things, checked here without mypy. With mypy installed: the package checks clean, every
Tensor attribute that exists at runtime is visible to it, and a user's model, training step
and compiled versions of both have the types they have at runtime (``Tensor``).
"""

import ast
import os
import textwrap
from pathlib import Path

import pytest

import tracegrad
from tracegrad import functions
from tracegrad.tensor import Tensor
from tracegrad.tensor.methods import ONE_OP_METHODS

ROOT = Path(tracegrad.__file__).parent.parent
TENSOR = "tracegrad.tensor.core.Tensor"


def _type_checking_block(tree: ast.AST) -> list[ast.stmt]:
    """The body of the (only) ``if TYPE_CHECKING:`` at the top level of ``tree``'s scope."""
    (block,) = [
        node
        for node in ast.iter_child_nodes(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
    ]
    return block.body


def test_one_op_declarations_are_the_table_s_methods_with_its_arity():
    source = (ROOT / "tracegrad" / "tensor" / "signatures.py").read_text()
    (declarations,) = [
        node
        for node in ast.parse(source).body
        if isinstance(node, ast.ClassDef) and node.name == "OneOpMethods"
    ]
    declared = {
        d.name: len(d.args.args)
        for d in _type_checking_block(declarations)
        if isinstance(d, ast.FunctionDef)
    }
    assert list(declared) == list(ONE_OP_METHODS)  # same names, in the table's order
    arity = {name: 1 if form.endswith("unary") else 2 for name, (_, form) in ONE_OP_METHODS.items()}
    assert declared == arity


def test_function_declarations_are_the_generated_functions_as_methods():
    tree = ast.parse((ROOT / "tracegrad" / "functions.py").read_text())
    declared = {
        a.targets[0].id: ast.unparse(a.value)
        for a in _type_checking_block(tree)
        if isinstance(a, ast.Assign)
    }
    assert declared == {name: f"Tensor.{name}" for name in functions._METHODS}


# --- with mypy ---------------------------------------------------------------------------------


def _mypy(*args: str) -> tuple[str, int]:
    """mypy's report and exit status, run from the checkout with its configuration."""
    api = pytest.importorskip("mypy.api")
    cwd = os.getcwd()
    os.chdir(ROOT)  # (the configuration, and this checkout's tracegrad before an installed one)
    try:
        stdout, stderr, status = api.run(["--config-file", "pyproject.toml", *args])
    finally:
        os.chdir(cwd)
    return stdout + stderr, status


def _check_program(tmp_path: Path, source: str) -> tuple[str, int]:
    program = tmp_path / "program.py"
    program.write_text(textwrap.dedent(source))
    # (the package's own report is the test below; here only the program's lines count)
    return _mypy("--follow-imports=silent", str(program))


def test_mypy_finds_no_error_in_the_package():
    report, status = _mypy()
    assert status == 0, report
    assert report.splitlines()[-1].startswith("Success: no issues found"), report


def test_every_tensor_attribute_and_function_is_visible_to_mypy(tmp_path):
    # (what Tensor has as every object does is known to mypy; it does not model __weakref__ nor
    # copyreg's __slotnames__ cache, set once a tensor is copied, and refuses to read __init__
    # off an instance)
    attributes = sorted(
        name
        for name in set(dir(Tensor)) - {"__weakref__", "__slotnames__", "__init__"}
        if getattr(Tensor, name) is not getattr(object, name, None)
    )
    functions_ = sorted(functions.__all__)
    source = "import tracegrad as tg\n\n\ndef touch(t: tg.Tensor) -> None:\n"
    source += "".join(f"    t.{name}\n" for name in attributes)
    source += "".join(f"    tg.{name}\n" for name in functions_)
    report, status = _check_program(tmp_path, source)
    assert status == 0, report
    # (what was looked at: the installed methods and the generated functions too)
    assert set(ONE_OP_METHODS) <= set(attributes) and set(functions._METHODS) <= set(functions_)


USER_PROGRAM = """
    import tracegrad as tg
    from tracegrad import nn
    import tracegrad.nn.functional as F


    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hidden = nn.Linear(4, 8)
            self.out = nn.Linear(8, 2)

        def forward(self, x: tg.Tensor) -> tg.Tensor:
            return self.out(F.relu(self.hidden(x)))


    model = Net()
    opt = tg.optim.SGD(model.parameters(), lr=0.1)
    x, y = tg.randn(3, 4), tg.randn(3, 2)


    def train_step(x: tg.Tensor, y: tg.Tensor) -> tg.Tensor:
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss


    compiled_model = tg.compile(model)
    compiled_step = tg.compile(train_step)
    reveal_type(model(x))  # Tensor
    reveal_type(model.hidden(x))  # Tensor
    reveal_type(nn.Sequential(nn.Linear(4, 2), nn.ReLU())(x))  # Any
    reveal_type(F.mse_loss(model(x), y))  # Tensor
    reveal_type((x @ x.T + 1) * 2 - x.exp().sigmoid() / 3)  # Tensor
    reveal_type(-x > 0)  # Tensor
    reveal_type(tg.exp(x))  # Tensor
    reveal_type(compiled_model(x))  # Tensor
    reveal_type(compiled_step(x, y))  # Tensor
    reveal_type(compiled_model.explain())  # tracegrad.compiled.explain.Explanation
"""


def test_a_user_program_has_the_types_it_has_at_runtime(tmp_path):
    report, status = _check_program(tmp_path, USER_PROGRAM)
    lines = textwrap.dedent(USER_PROGRAM).splitlines()
    expected = {
        number: line.split("# ")[-1]
        for number, line in enumerate(lines, start=1)
        if line.startswith("reveal_type(")
    }
    revealed = {
        int(line.split(":")[1]): line.split('"')[1]
        for line in report.splitlines()
        if "Revealed type is" in line
    }
    assert revealed == {n: TENSOR if t == "Tensor" else t for n, t in expected.items()}, report
    assert status == 0, report  # (reveal_type's notes are no errors)
