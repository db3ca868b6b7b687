"""Compiled modules and compiled functions are two targets of one Specializer: the same
cache and recompile policy, and the same views of their latest specialization."""

from __future__ import annotations

import pytest

import tracegrad as tg
from tracegrad import nn
from tracegrad.compiled.specializer import Specializer


def targets():
    tg.manual_seed(0)
    module = nn.Linear(3, 2)
    return {"module": tg.compile(module), "function": tg.compile(lambda x: module(x) * 2.0)}


@pytest.mark.parametrize("kind", ["module", "function"])
def test_views_before_any_call_say_what_to_do(kind):
    compiled = targets()[kind]
    assert isinstance(compiled, Specializer)
    with pytest.raises(RuntimeError, match=f"call the compiled {kind} once first"):
        compiled.graph  # noqa: B018


@pytest.mark.parametrize("kind", ["module", "function"])
def test_both_targets_share_cache_policy_and_views(kind, tmp_path):
    compiled = targets()[kind]
    compiled.max_recompiles = 1
    compiled(tg.ones(4, 3))
    compiled(tg.ones(4, 3))
    assert len(compiled.specializations) == 1 and compiled.recompile_reasons == []
    compiled(tg.ones(5, 3))
    assert compiled.recompile_reasons == ["input 0: shape (4, 3) -> (5, 3)"]
    with pytest.raises(tg.RecompileError, match="max_recompiles=1"):
        compiled(tg.ones(6, 3))
    assert "def " in compiled.code and compiled.graph.outputs
    assert "recompile" in compiled.explain().lower()
    assert [title for title, _ in compiled.views()]
    assert compiled.visualize(tmp_path / "picture.dot").exists()
    compiled.export(tmp_path / "exported.py")
    assert (tmp_path / "exported.py").exists()
    assert tuple(compiled(tg.ones(5, 3)).shape) == (5, 2)  # (cached: no recompile)
