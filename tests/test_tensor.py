"""Tensor API: construction, dtypes and promotion, metadata, conversions, views, in-place."""

import ast
from pathlib import Path

import numpy as np
import pytest

import tracegrad as tg
from tracegrad.tensor import Tensor, call, dispatch
from tracegrad.tensor.methods import ONE_OP_METHODS


def test_tensor_keeps_numpy_dtypes_and_python_scalars_follow_pytorch():
    assert tg.tensor(np.zeros(2, np.float64)).dtype == tg.float64
    assert tg.tensor(np.zeros(2, np.float32)).dtype == tg.float32
    assert tg.tensor(np.zeros(2, np.int64)).dtype == tg.int64
    assert tg.tensor(np.zeros(2, bool)).dtype == tg.bool
    assert tg.tensor(1.5).dtype == tg.float32
    assert tg.tensor([1, 2]).dtype == tg.int64
    assert tg.tensor([True]).dtype == tg.bool
    assert tg.FloatTensor([1, 2]).dtype == tg.float32
    assert tg.tensor([1, 2], dtype=tg.float64).dtype == tg.float64


def test_tensor_copies_its_data():
    source = np.ones(3)
    t = tg.tensor(source)
    t.add_(1)
    assert source.tolist() == [1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("left", "right", "expected"),
    [
        (tg.float32, tg.float64, tg.float64),
        (tg.int64, tg.float32, tg.float32),
        (tg.bool, tg.int64, tg.int64),
        (tg.bool, tg.float64, tg.float64),
    ],
)
def test_binary_promotion_between_tensors(left, right, expected):
    a, b = tg.ones(2, dtype=left), tg.ones(2, dtype=right)
    assert (a + b).dtype == expected
    assert (b * a).dtype == expected


def test_python_scalars_are_weak_and_zero_dim_tensors_rank_below_dimensioned():
    x32 = tg.ones(3)
    assert (x32 * 2.5).dtype == tg.float32
    assert (tg.ones(3, dtype=tg.int64) * 2.5).dtype == tg.float32
    assert (tg.ones(3, dtype=tg.int64) + 2).dtype == tg.int64
    assert (x32 + tg.tensor(1.0, dtype=tg.float64)).dtype == tg.float32
    assert (tg.ones(3, dtype=tg.int64) / tg.ones(3, dtype=tg.int64)).dtype == tg.float32


def test_factories_and_seeding():
    assert tg.zeros(2, 3).shape == (2, 3)
    assert tg.ones((2, 3)).tolist() == [[1.0] * 3] * 2
    assert tg.full((2,), 7).dtype == tg.int64
    assert tg.full((2,), 7.0).tolist() == [7.0, 7.0]
    assert tg.arange(4).tolist() == [0, 1, 2, 3]
    assert tg.arange(0, 1, 0.5).dtype == tg.float32
    assert tg.zeros_like(tg.ones(2, dtype=tg.float64)).dtype == tg.float64
    assert tg.empty(3).shape == (3,)
    tg.manual_seed(3)
    first = tg.randn(4).tolist()
    tg.manual_seed(3)
    assert tg.randn(4).tolist() == first
    assert tg.rand(100).min().item() >= 0.0 and tg.rand(100).max().item() < 1.0


def test_metadata_and_conversions():
    t = tg.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert t.shape == (2, 3) and t.size() == (2, 3) and t.size(1) == 3 and t.size(-1) == 3
    assert t.ndim == 2 and t.numel() == 6 and len(t) == 2
    assert t.T.shape == (3, 2)
    assert t.tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    assert t[1, 2].item() == 6.0
    assert isinstance(t.numpy(), np.ndarray)
    assert t.double().dtype == tg.float64 and t.long().dtype == tg.int64
    assert repr(t.shape) == "tracegrad.Size([2, 3])"


def test_numpy_on_tensor_requiring_grad_tells_user_to_detach():
    t = tg.ones(2, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"detach\(\)"):
        t.numpy()
    with pytest.raises(RuntimeError, match="requires grad"):
        np.asarray(t)
    assert t.detach().numpy().tolist() == [1.0, 1.0]


def test_item_needs_one_element():
    with pytest.raises(ValueError, match="2 elements"):
        tg.ones(2).item()


def test_integer_tensors_cannot_require_grad():
    with pytest.raises(TypeError, match="floating point"):
        tg.tensor([1, 2], requires_grad=True)
    with pytest.raises(RuntimeError, match="int64"):
        tg.arange(3).requires_grad_()


def test_shape_methods():
    x = tg.arange(24).reshape(2, 3, 4)
    assert x.view(6, -1).shape == (6, 4)
    assert x.flatten(1).shape == (2, 12)
    assert x.flatten().shape == (24,)
    assert x.transpose(0, 2).shape == (4, 3, 2)
    assert x.permute(2, 0, 1).shape == (4, 2, 3)
    assert x.unsqueeze(1).shape == (2, 1, 3, 4)
    assert x.unsqueeze(-1).shape == (2, 3, 4, 1)
    assert x[:, :1].squeeze(1).shape == (2, 4)
    assert tg.ones(1, 3, 1).squeeze().shape == (3,)
    assert tg.ones(3, 1).expand(3, 4).shape == (3, 4)
    assert tg.ones(3, 1).expand(-1, 4).shape == (3, 4)
    np.testing.assert_array_equal(tg.tensor([[1, 2]]).repeat(2, 2).numpy(), [[1, 2, 1, 2]] * 2)
    np.testing.assert_array_equal(x.permute(2, 0, 1).numpy(), x.numpy().transpose(2, 0, 1))
    with pytest.raises(RuntimeError, match=r"\(2, 3, 4\).*\(5, -1\)|invalid for input of size 24"):
        x.reshape(5, -1)


def test_indexing_basic_advanced_and_masks():
    data = np.arange(12.0).reshape(3, 4)
    x = tg.tensor(data)
    np.testing.assert_array_equal(x[1].numpy(), data[1])
    np.testing.assert_array_equal(x[:, ::-2].numpy(), data[:, ::-2])
    np.testing.assert_array_equal(x[None, ..., 1].numpy(), data[None, ..., 1])
    np.testing.assert_array_equal(x[tg.tensor([2, 0, 2])].numpy(), data[[2, 0, 2]])
    np.testing.assert_array_equal(x[[0, 1], [1, 2]].numpy(), data[[0, 1], [1, 2]])
    np.testing.assert_array_equal(x[x > 5].numpy(), data[data > 5])
    mask = tg.tensor([True, False, True])
    np.testing.assert_array_equal(x[mask].numpy(), data[[True, False, True]])


def test_masked_fill_where_and_bool_operators():
    x = tg.tensor([1.0, -2.0, 3.0])
    mask = x < 0
    assert x.masked_fill(mask, 0.0).tolist() == [1.0, 0.0, 3.0]
    assert tg.where(mask, x, -x).tolist() == [-1.0, -2.0, -3.0]
    assert (~mask).tolist() == [True, False, True]
    assert (mask | (x > 2)).tolist() == [False, True, True]
    assert (mask & (x > 2)).tolist() == [False, False, False]
    assert tg.tril(tg.ones(3, 3)).sum().item() == 6.0
    assert tg.triu(tg.ones(3, 3), 1).sum().item() == 3.0


def test_max_min_with_dim_return_values_and_indices():
    x = tg.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]])
    values, indices = x.max(dim=1)
    assert values.tolist() == [5.0, 7.0] and indices.tolist() == [1, 0]
    result = x.min(0, keepdim=True)
    assert result.values.tolist() == [[1.0, 0.0, 2.0]] and result.indices.tolist() == [[0, 1, 0]]
    assert x.max().item() == 7.0
    assert x.argmax().item() == 3
    assert tg.max(x, tg.zeros(2, 3) + 4).tolist() == [[4.0, 5.0, 4.0], [7.0, 4.0, 4.0]]


def test_reductions_match_numpy():
    data = np.random.default_rng(0).standard_normal((3, 4))
    x = tg.tensor(data)
    np.testing.assert_allclose(x.sum(0).numpy(), data.sum(0))
    np.testing.assert_allclose(x.mean((0, 1)).numpy(), data.mean())
    np.testing.assert_allclose(x.var(1).numpy(), data.var(1, ddof=1))
    np.testing.assert_allclose(x.var(1, unbiased=False).numpy(), data.var(1))
    np.testing.assert_allclose(
        x.std(keepdim=True, dim=0).numpy(), data.std(0, ddof=1, keepdims=True)
    )
    assert tg.tensor([True, True, False]).sum().item() == 2


def test_inplace_ops_write_through_and_bump_versions():
    x = tg.zeros(3)
    view = x[1:]
    x.add_(1).mul_(3)
    x += 1
    assert x.tolist() == [4.0, 4.0, 4.0]
    view.fill_(2.0)
    assert x.tolist() == [4.0, 2.0, 2.0]
    x.zero_()
    x.copy_(tg.tensor([1.0, 2.0, 3.0]))
    assert x.tolist() == [1.0, 2.0, 3.0]
    assert x.version == 6 and view.version == 6  # (a view counts the writes to its memory)


@pytest.mark.parametrize("method", ["add_", "sub_", "mul_", "div_"])
@pytest.mark.parametrize(
    "self_dtype, other",
    [
        ("float32", 1.5),
        ("float32", np.array([[0.5], [2.0]])),  # float64 tensor, broadcast along the rows
        ("float64", np.array([3.0, -1.0, 0.25], np.float32)),
        ("int64", 2.5),  # computed in float, cast back as copy_ does
    ],
)
def test_eager_inplace_arithmetic_writes_straight_into_memory_as_the_op_then_copy_(
    method, self_dtype, other
):
    """Outside autograd, x.add_(y) runs np.add(x, y, out=x) (no new array): the same values,
    dtype and version as computing x + y and copying it back, and the same memory."""
    start = np.array([[1.0, -2.0, 4.0], [0.5, 3.0, -1.5]]).astype(self_dtype)
    other = tg.tensor(other) if isinstance(other, np.ndarray) else other
    binary = {"add_": "__add__", "sub_": "__sub__", "mul_": "__mul__", "div_": "__truediv__"}
    expected = getattr(tg.tensor(start), binary[method])(other).to(getattr(tg, self_dtype))
    x = tg.tensor(start.copy())
    memory = x.array
    assert getattr(x, method)(other) is x
    assert x.array is memory and x.dtype == getattr(tg, self_dtype) and x.version == 1
    np.testing.assert_array_equal(x.numpy(), expected.numpy())


@pytest.mark.parametrize("method", ["add_", "sub_"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_eager_inplace_with_alpha_equals_the_scaled_op(method, dtype):
    start = np.array([1.0, -2.0, 4.0]).astype(dtype)
    other = tg.tensor(np.array([0.3, 0.7, -1.1]).astype(dtype))
    x = tg.tensor(start.copy())
    getattr(x, method)(other, alpha=0.01)
    op = {"add_": "__add__", "sub_": "__sub__"}[method]
    expected = getattr(tg.tensor(start), op)(other * 0.01)
    np.testing.assert_array_equal(x.numpy(), expected.numpy())
    np.testing.assert_array_equal(other.numpy(), np.array([0.3, 0.7, -1.1]).astype(dtype))


def test_eager_inplace_arithmetic_keeps_its_errors():
    with pytest.raises(RuntimeError, match="does not fit the in-place target"):
        tg.zeros(3).add_(tg.ones(2, 3))
    with pytest.raises(tg.ShapeError, match=r"\(3,\).*\(4,\)"):
        tg.zeros(3).add_(tg.ones(4))
    with pytest.raises(RuntimeError, match="shares memory between elements"):
        tg.zeros(3).expand(2, 3).mul_(2.0)


def test_inplace_on_leaf_requiring_grad_is_refused_unless_no_grad():
    w = tg.ones(2, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf"):
        w.add_(1)
    with tg.no_grad():
        w.sub_(0.5)
    assert w.tolist() == [0.5, 0.5] and w.requires_grad


def test_setitem_outside_autograd():
    x = tg.zeros(2, 3)
    x[0, 1:] = 5.0
    x[1] = tg.tensor([1.0, 2.0, 3.0])
    assert x.tolist() == [[0.0, 5.0, 5.0], [1.0, 2.0, 3.0]]
    with pytest.raises(RuntimeError, match=r"tracegrad\.where"):
        tg.ones(2, requires_grad=True)[0] = 1.0


def test_repr_reads_like_pytorch():
    t = tg.tensor([1.0, 2.0], requires_grad=True)
    assert repr(t) == "tensor([1., 2.], requires_grad=True)"
    assert "grad_fn=<MulBackward>" in repr(t * 2)
    assert "dtype=tracegrad.float64" in repr(t.double())


def test_module_level_functions_mirror_methods():
    x = tg.tensor([[0.5, -1.0], [2.0, 0.0]])
    np.testing.assert_allclose(tg.exp(x).numpy(), np.exp(x.numpy()), rtol=1e-6)
    np.testing.assert_allclose(tg.matmul(x, x).numpy(), x.numpy() @ x.numpy(), rtol=1e-6)
    assert tg.cat([x, x], 1).shape == (2, 4)
    assert tg.stack([x, x]).shape == (2, 2, 2)
    np.testing.assert_allclose(tg.einsum("ij,jk->ik", x, x).numpy(), x.numpy() @ x.numpy())
    np.testing.assert_allclose(tg.maximum(x, tg.zeros(1)).numpy(), np.maximum(x.numpy(), 0))
    np.testing.assert_allclose(tg.softmax(x, 1).sum(1).numpy(), [1.0, 1.0], rtol=1e-6)


def test_apply_with_out_writes_an_ops_result_into_the_tensors_memory():
    """Eagerly and recording nothing, an op with a NumPy out= form writes straight into the
    target; an op without one computes its result and copies it in. Both count the write."""
    x, y = tg.tensor([1.0, 2.0]), tg.tensor([3.0, 5.0])
    memory = x.array
    assert call("lerp", x, y, tg.tensor(0.5, dtype=tg.float64), out=x) is x
    assert x.array is memory and x.tolist() == [2.0, 3.5] and x.version == 1
    call("clamp", x, min=None, max=3.0, out=x)
    assert x.array is memory and x.tolist() == [2.0, 3.0] and x.version == 2


def test_add_and_sub_with_a_number_alpha_write_one_op_without_a_temporary(monkeypatch):
    """``add_(y, alpha=a)`` (an SGD step) is one op writing into the target's memory; the
    same bits as forming ``y * a`` first. Integer targets keep the two-op form."""
    x, y = tg.randn(5), tg.randn(5)
    memory, expected = x.array, (x - y * 0.1).numpy()
    monkeypatch.setattr(Tensor, "__mul__", None)  # (no y * 0.1 formed on the way)
    x.sub_(y, alpha=0.1)
    monkeypatch.undo()
    assert x.array is memory and x.version == 1
    np.testing.assert_array_equal(x.numpy(), expected)
    n = tg.tensor([1, 2])
    n.add_(tg.tensor([3, 4]), alpha=2)
    assert n.tolist() == [7, 10]


def test_float_errors_ignored_runs_ops_without_warnings_and_restores_the_state():
    x = tg.tensor([1.0, 0.0])
    with np.errstate(all="raise"):
        with dispatch.float_errors_ignored():
            assert (x / 0.0).tolist()[0] == float("inf")
            assert np.geterr()["divide"] == "ignore"
        assert np.geterr()["divide"] == "raise"
        assert x.log().tolist()[1] == float("-inf")  # each op ignores them on its own


def test_apply_with_out_keeps_autograd_semantics():
    w = tg.tensor([1.0, 2.0], requires_grad=True)
    h = w * 1.0
    call("mul", h, w, out=h)  # h = (w * 1) * w: its history now ends in the write
    h.sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), [2.0, 4.0])
    with pytest.raises(RuntimeError, match="mul_: a leaf tensor that requires grad"):
        call("mul", w, w, out=w)


def test_one_op_methods_run_their_op(monkeypatch):
    applied = []
    run = dispatch.apply

    def spy(op, inputs, attrs, **write):
        applied.append(op.name)
        return run(op, inputs, attrs, **write)

    monkeypatch.setattr(dispatch, "apply", spy)
    monkeypatch.setattr(tg.Tensor, "apply_op", staticmethod(spy))
    x, y = tg.tensor([0.5, 2.0]), tg.tensor([1.0, 3.0])
    for method, (op, form) in ONE_OP_METHODS.items():
        getattr(x, method)(*(() if form.endswith("unary") else (y,)))
        assert applied[-1] == op, method


def test_ops_and_ir_never_import_tensors():
    """The registry reaches the tensor layer through Tensor.apply_op, not an import."""
    root = Path(tg.__file__).parent
    for path in [*root.glob("ops/*.py"), *root.glob("ir/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any(n.startswith("tracegrad.tensor") for n in names), path
