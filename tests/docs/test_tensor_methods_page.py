"""The generated reference page of Tensor's methods (docs/_hooks/tensor_methods.py) has a
section for every public member of the live class, with its signature and docstring."""

from __future__ import annotations

import importlib.util

from markdown_code import DOCS

import tracegrad as tg

HOOK = DOCS / "_hooks" / "tensor_methods.py"


def generated_page() -> str:
    spec = importlib.util.spec_from_file_location("tensor_methods", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.page()


def test_every_public_member_has_a_section():
    page = generated_page()
    public = [name for name in dir(tg.Tensor) if not name.startswith("_")]
    assert len(public) > 100
    for name in public:
        assert f"\n## {name}\n" in page, name


def test_signatures_leave_self_out_and_docstrings_come_along():
    page = generated_page()
    assert "`detach() -> Tensor`" in page
    assert "`shape` (property)" in page
    assert tg.Tensor.backward.__doc__.split("\n")[0].strip() in page


def test_every_public_member_has_a_docstring():
    assert "No docstring yet." not in generated_page()
