"""NumPy ufuncs and functions on tensors dispatch to tracegrad ops and are differentiated."""

import numpy as np
import pytest

import tracegrad as tg


def test_ufuncs_dispatch_and_differentiate():
    x = tg.tensor([0.5, 1.5], dtype=tg.float64, requires_grad=True)
    y = np.exp(x) * np.sin(x)
    assert isinstance(y, tg.Tensor)
    y.sum().backward()
    data = np.array([0.5, 1.5])
    np.testing.assert_allclose(x.grad.numpy(), np.exp(data) * (np.sin(data) + np.cos(data)))


def test_array_functions_dispatch():
    a = tg.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    b = tg.tensor([[0.5], [1.0]])
    total = np.sum(np.matmul(a, b), axis=0)
    assert isinstance(total, tg.Tensor) and total.shape == (1,)
    total.sum().backward()
    assert a.grad.tolist() == [[0.5, 1.0], [0.5, 1.0]]
    assert np.mean(a).item() == 2.5
    assert np.concatenate([a, a], axis=1).shape == (2, 4)
    assert np.where(a > 2, a, 0.0).detach().tolist() == [[0.0, 0.0], [3.0, 4.0]]


def test_numpy_operators_with_tensor_on_the_right_return_tensors():
    t = tg.tensor([1.0, 2.0], requires_grad=True)
    out = np.array([3.0, 4.0]) * t
    assert isinstance(out, tg.Tensor) and out.requires_grad


def test_asarray_of_tensor_without_grad():
    t = tg.tensor([1.0, 2.0])
    assert np.asarray(t).tolist() == [1.0, 2.0]
    assert np.asarray(t, dtype=np.float64).dtype == np.float64


def test_unsupported_numpy_function_names_itself():
    with pytest.raises(TypeError, match=r"numpy\.fft|fft"):
        np.fft.fft(tg.ones(4))
    with pytest.raises(TypeError, match=r"'numpy.median'"):
        np.median(tg.ones(3))
    with pytest.raises(TypeError, match=r"'cbrt'"):
        np.cbrt(tg.ones(2))


DOT_SHAPES = [
    ((), ()),
    ((), (3,)),
    ((2, 3), ()),
    ((3,), (3,)),
    ((3,), (3, 4)),
    ((2, 3), (3,)),
    ((2, 3), (3, 4)),
    ((4,), (2, 4, 5)),
    ((2, 3), (2, 3, 4)),
    ((2, 2, 3), (2, 3, 4)),
    ((2, 1, 3), (3,)),
    ((1, 2, 3), (4, 3, 2)),
]


def _dot_operands(shape_a, shape_b):
    rng = np.random.default_rng(len(shape_a) * 7 + len(shape_b))
    return rng.standard_normal(shape_a), rng.standard_normal(shape_b)


@pytest.mark.parametrize(("shape_a", "shape_b"), DOT_SHAPES)
def test_dot_follows_numpy_not_matmul(shape_a, shape_b):
    # np.dot contracts a's last axis with b's second-to-last and does not broadcast: for
    # (2,3) . (2,3,4) it is (2,2,4), where matmul would give (2,2,4) with other values.
    a, b = _dot_operands(shape_a, shape_b)
    expected = np.dot(a, b)
    got = np.dot(tg.tensor(a), tg.tensor(b))
    assert isinstance(got, tg.Tensor) and tuple(got.shape) == np.shape(expected)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)
    mixed = np.dot(a, tg.tensor(b))
    np.testing.assert_allclose(mixed.numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("shape_a", "shape_b"), DOT_SHAPES)
def test_dot_gradients_match_finite_differences(shape_a, shape_b):
    a, b = _dot_operands(shape_a, shape_b)
    ta, tb = (tg.tensor(v, requires_grad=True) for v in (a, b))
    assert tg.autograd.gradcheck(lambda x, y: np.dot(x, y), (ta, tb))


class _Dot(tg.nn.Module):
    def __init__(self, a):
        super().__init__()
        self.a = tg.nn.Parameter(tg.tensor(a))

    def forward(self, b):
        return np.dot(self.a, b)


@pytest.mark.parametrize(("shape_a", "shape_b"), [((2, 3), (2, 3, 4)), ((3,), (3,)), ((), (2,))])
def test_dot_compiled_equals_eager(shape_a, shape_b):
    a, b = _dot_operands(shape_a, shape_b)
    results = []
    for module in (_Dot(a), tg.compile(_Dot(a))):
        tb = tg.tensor(b, requires_grad=True)
        out = module(tb)
        out.sum().backward()
        results.append((out.detach().numpy(), module.a.grad.numpy(), tb.grad.numpy()))
    for compiled, eager in zip(results[1], results[0], strict=True):
        np.testing.assert_allclose(compiled, eager, rtol=1e-12)


@pytest.mark.parametrize(
    ("values", "axis"),
    [([2.0], None), ([2.0, 2.0, 2.0], None), ([[1.0, 1.0], [0.5, 2.0]], 1), ([[3.0], [4.0]], 1)],
)
def test_std_gradient_is_zero_where_the_values_are_constant(values, axis):
    # std is flat at constant values (a kink): PyTorch's std rule gives 0 there, and HIPS
    # autograd's suite expects 0 for np.std of a single element; sqrt's inf times 0 gives nan.
    torch = pytest.importorskip("torch")
    x = tg.tensor(np.array(values), requires_grad=True)
    out = np.std(x, axis=axis)
    out.sum().backward()
    xt = torch.tensor(values, dtype=torch.float64, requires_grad=True)
    expected = xt.std(dim=axis, correction=0) if axis is not None else xt.std(correction=0)
    expected.sum().backward()
    np.testing.assert_allclose(out.detach().numpy(), expected.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-12, atol=0)
    assert np.isfinite(x.grad.numpy()).all()


@pytest.mark.parametrize(("axis", "ddof"), [(None, 0), (0, 1), (1, 0), ((0, 1), 1)])
def test_std_and_var_gradients_match_finite_differences(axis, ddof):
    x = tg.tensor(np.random.default_rng(3).standard_normal((3, 4)), requires_grad=True)
    assert tg.autograd.gradcheck(lambda a: np.std(a, axis=axis, ddof=ddof), (x,))
    assert tg.autograd.gradcheck(lambda a: np.var(a, axis=axis, ddof=ddof), (x,))
    np.testing.assert_allclose(
        np.std(x, axis=axis, ddof=ddof).detach().numpy(),
        np.std(x.detach().numpy(), axis=axis, ddof=ddof),
        rtol=1e-12,
    )


# --- the table: each function on NumPy arrays is its own reference ------------------------
# (id, function of arrays or tensors alike, input shapes, input domain). The domain is
# "real" (normals), "unit" (inside (-1, 1)), "above_one", "positive" or "spaced" (values
# 0.1 or more apart and from the integers: no ties, no steps of floor or remainder).


def _draw(rng, shape, domain):
    if domain == "unit":
        return rng.uniform(-0.9, 0.9, shape)
    if domain == "above_one":
        return rng.uniform(1.2, 3.0, shape)
    if domain == "positive":
        return rng.uniform(0.5, 2.0, shape)
    if domain == "spaced":
        n = int(np.prod(shape, dtype=np.int64))
        return (rng.permutation(n) * 0.37 - 0.37 * n / 2 + 0.15).reshape(shape)
    return rng.standard_normal(shape)


UFUNC_ROWS = [
    ("arcsin", np.arcsin, [(2, 3)], "unit"),
    ("arccos", np.arccos, [(2, 3)], "unit"),
    ("arctan", np.arctan, [(2, 3)], "real"),
    ("arctan2", np.arctan2, [(2, 3), (3,)], "positive"),
    ("arcsinh", np.arcsinh, [(2, 3)], "real"),
    ("arccosh", np.arccosh, [(2, 3)], "above_one"),
    ("arctanh", np.arctanh, [(2, 3)], "unit"),
    ("sinh", np.sinh, [(2, 3)], "real"),
    ("cosh", np.cosh, [(2, 3)], "real"),
    ("tan", np.tan, [(2, 3)], "unit"),
    ("expm1", np.expm1, [(2, 3)], "real"),
    ("exp2", np.exp2, [(2, 3)], "real"),
    ("log2", np.log2, [(2, 3)], "positive"),
    ("log10", np.log10, [(2, 3)], "positive"),
    ("logaddexp", np.logaddexp, [(2, 3), (2, 1)], "real"),
    ("logaddexp2", np.logaddexp2, [(2, 3), (3,)], "real"),
    ("hypot", np.hypot, [(2, 3), (2, 3)], "positive"),
    ("floor", lambda x: np.floor(x) * x, [(2, 3)], "spaced"),
    ("ceil", lambda x: np.ceil(x) * x, [(2, 3)], "spaced"),
    ("fabs", np.fabs, [(2, 3)], "spaced"),
    ("reciprocal", np.reciprocal, [(2, 3)], "positive"),
    ("remainder", np.remainder, [(2, 3), (3,)], "spaced"),
    ("mod_operator", lambda x, y: x % y * 2.0, [(2, 3), ()], "spaced"),
    ("fmax", np.fmax, [(2, 3), (2, 3)], "spaced"),
    ("fmin", np.fmin, [(2, 3), (3,)], "spaced"),
    ("deg2rad", np.deg2rad, [(2, 3)], "real"),
    ("rad2deg", np.rad2deg, [(2, 3)], "real"),
    ("sinc", np.sinc, [(2, 3)], "real"),
]

FUNCTION_ROWS = [
    ("cumsum", lambda a: np.cumsum(a, axis=1), [(2, 3)], "real"),
    ("cumsum_flat", np.cumsum, [(2, 3)], "real"),
    ("prod", lambda a: np.prod(a, axis=0), [(3, 4)], "real"),
    ("prod_all", np.prod, [(2, 3)], "real"),
    ("prod_axes_keepdims", lambda a: np.prod(a, axis=(0, 2), keepdims=True), [(2, 3, 2)], "real"),
    ("diag_of_vector", lambda v: np.diag(v, 1), [(3,)], "real"),
    ("diag_of_matrix", lambda m: np.diag(m, -1), [(3, 4)], "real"),
    ("diagonal", lambda a: np.diagonal(a, 1, 0, 2), [(3, 2, 4)], "real"),
    ("trace", np.trace, [(3, 4)], "real"),
    ("outer", np.outer, [(3,), (2, 2)], "real"),
    ("inner", np.inner, [(2, 3), (4, 3)], "real"),
    (
        "tensordot",
        lambda a, b: np.tensordot(a, b, axes=([1, 0], [2, 0])),
        [(3, 2), (3, 4, 2)],
        "real",
    ),
    ("tensordot_int", np.tensordot, [(2, 3, 4), (3, 4, 2)], "real"),
    ("kron", np.kron, [(2, 3), (2, 2)], "real"),
    ("tril", lambda m: np.tril(m, -1), [(3, 4)], "real"),
    ("triu", np.triu, [(3, 4)], "real"),
    ("pad_constant", lambda a: np.pad(a, ((1, 2), (0, 1)), constant_values=0.5), [(2, 3)], "real"),
    ("pad_edge", lambda a: np.pad(a, 2, mode="edge"), [(2, 3)], "real"),
    ("pad_reflect", lambda a: np.pad(a, (1, 2), mode="reflect"), [(3, 4)], "real"),
    ("pad_wrap", lambda a: np.pad(a, ((0, 0), (2, 1)), mode="wrap"), [(2, 3)], "real"),
    (
        "pad_constants_per_side",
        lambda a: np.pad(a, ((1, 2), (2, 1)), constant_values=((1.5, -2), (3, 4))),
        [(2, 3)],
        "real",
    ),
    (
        "pad_constants_per_axis",
        lambda a: np.pad(a, 1, constant_values=[[7.0, 8.0], [0.0, 0.5], [-1.0, 2.0]]),
        [(2, 1, 3)],
        "real",
    ),
    ("pad_constant_pair", lambda a: np.pad(a, (2, 1), constant_values=(5, 6)), [(3,)], "real"),
    ("tile", lambda a: np.tile(a, (2, 1, 2)), [(2, 3)], "real"),
    ("repeat", lambda a: np.repeat(a, 2), [(2, 3)], "real"),
    ("repeat_axis", lambda a: np.repeat(a, [1, 0, 3], axis=1), [(2, 3)], "real"),
    ("roll", lambda a: np.roll(a, -1, axis=1), [(2, 3)], "real"),
    ("flip", np.flip, [(2, 3)], "real"),
    ("fliplr", np.fliplr, [(2, 3)], "real"),
    ("flipud", np.flipud, [(2, 3)], "real"),
    ("rot90", np.rot90, [(2, 3)], "real"),
    ("rot90_k3", lambda a: np.rot90(a, 3, axes=(1, 2)), [(2, 3, 4)], "real"),
    ("moveaxis", lambda a: np.moveaxis(a, [0, 1], [-1, 0]), [(2, 3, 4)], "real"),
    ("swapaxes", lambda a: np.swapaxes(a, 0, 2), [(2, 3, 4)], "real"),
    ("split", lambda a: tuple(np.split(a, 3, axis=1)), [(2, 6)], "real"),
    ("split_indices", lambda a: tuple(np.split(a, [1, 4])), [(6, 2)], "real"),
    ("array_split", lambda a: tuple(np.array_split(a, 3)), [(7,)], "real"),
    ("hsplit", lambda a: tuple(np.hsplit(a, 2)), [(2, 4)], "real"),
    ("vsplit", lambda a: tuple(np.vsplit(a, [1])), [(3, 2)], "real"),
    ("dsplit", lambda a: tuple(np.dsplit(a, 2)), [(2, 1, 4)], "real"),
    ("hstack", lambda a, b: np.hstack([a, b]), [(2, 3), (2, 1)], "real"),
    ("hstack_vectors", lambda a, b: np.hstack((a, b)), [(3,), (2,)], "real"),
    ("vstack", lambda a, b: np.vstack([a, b]), [(3,), (2, 3)], "real"),
    ("column_stack", lambda a, b: np.column_stack([a, b]), [(3,), (3, 2)], "real"),
    ("atleast_1d", np.atleast_1d, [()], "real"),
    ("atleast_2d", lambda a, b: np.atleast_2d(a, b), [(3,), ()], "real"),
    ("atleast_3d", lambda a, b: np.atleast_3d(a, b), [(3,), (2, 3)], "real"),
    ("linspace", lambda a, b: np.linspace(a, b, 5), [(), ()], "real"),
    (
        "linspace_arrays",
        lambda a, b: np.linspace(a, b, 4, endpoint=False, axis=1),
        [(2,), (2,)],
        "real",
    ),
    ("diff", lambda a: np.diff(a, 2), [(2, 5)], "real"),
    ("diff_axis", lambda a: np.diff(a, axis=0), [(3, 2)], "real"),
    ("sort", lambda a: np.sort(a, axis=0), [(3, 4)], "spaced"),
    ("sort_flat", lambda a: np.sort(a, axis=None), [(3, 4)], "spaced"),
    ("ravel", np.ravel, [(2, 3)], "real"),
    ("norm", np.linalg.norm, [(2, 3)], "real"),
    ("norm_axis_ord", lambda a: np.linalg.norm(a, 3, axis=1), [(2, 3)], "real"),
    ("norm_inf", lambda a: np.linalg.norm(a, np.inf, axis=0, keepdims=True), [(2, 3)], "spaced"),
    ("norm_matrix_1", lambda a: np.linalg.norm(a, 1), [(3, 4)], "spaced"),
    ("norm_matrix_inf", lambda a: np.linalg.norm(a, -np.inf, axis=(2, 0)), [(3, 2, 4)], "spaced"),
    ("norm_fro", lambda a: np.linalg.norm(a, "fro", axis=(0, 1), keepdims=True), [(2, 3)], "real"),
    ("norm_spectral", lambda a: np.linalg.norm(a, 2), [(3, 4)], "real"),
    ("norm_smallest_singular", lambda a: np.linalg.norm(a, -2, axis=(2, 0)), [(3, 2, 4)], "real"),
    ("norm_nuclear", lambda a: np.linalg.norm(a, "nuc", keepdims=True), [(4, 3)], "real"),
    (
        "norm_nuclear_axes",
        lambda a: np.linalg.norm(a, "nuc", axis=(0, 2), keepdims=True),
        [(2, 3, 4)],
        "real",
    ),
    (
        "select",
        lambda a, b: np.select([a > 0.5, b < 0], [a, b * 2], 3.0),
        [(2, 3), (2, 3)],
        "spaced",
    ),
    ("nan_to_num", lambda a: np.nan_to_num(np.log(a), neginf=-5.0), [(2, 3)], "positive"),
    (
        "einsum_ellipsis",
        lambda a, b: np.einsum("...ij,jk->...ik", a, b),
        [(2, 2, 3), (3, 2)],
        "real",
    ),
    ("einsum_broadcast", lambda a, b: np.einsum("...j,...j", a, b), [(2, 1, 3), (4, 3)], "real"),
    ("einsum_diagonal", lambda a: np.einsum("iji->j", a), [(3, 2, 3)], "real"),
    ("einsum_trace", lambda a: np.einsum("ii", a), [(3, 3)], "real"),
    (
        "einsum_sublist",
        lambda a, b: np.einsum(a, [0, Ellipsis], b, [1, Ellipsis], [Ellipsis, 1, 0]),
        [(2, 3), (4, 3)],
        "real",
    ),
]

ROWS = {row[0]: row for row in UFUNC_ROWS + FUNCTION_ROWS}


def _arrays(name):
    _, _, shapes, domain = ROWS[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    return [_draw(rng, shape, domain) for shape in shapes]


def _outputs(result):
    return tuple(result) if isinstance(result, (tuple, list)) else (result,)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_numpy_function_values_match_numpy(name):
    fn, arrays = ROWS[name][1], _arrays(name)
    got, want = _outputs(fn(*map(tg.tensor, arrays))), _outputs(fn(*arrays))
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert isinstance(g, tg.Tensor) and tuple(g.shape) == np.shape(w)
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_numpy_function_gradients_match_finite_differences(name):
    fn, arrays = ROWS[name][1], _arrays(name)
    inputs = tuple(tg.tensor(a, requires_grad=True) for a in arrays)
    assert tg.autograd.gradcheck(lambda *xs: _outputs(fn(*xs)), inputs)


def test_numpy_results_that_are_not_arrays():
    a = tg.tensor([1.0, 2.0])
    assert np.allclose(a, [1.0, 2.0 + 1e-9]) is True
    assert np.allclose(a, tg.tensor([1.0, float("nan")]), equal_nan=True) is False
    assert np.size(tg.ones(2, 3)) == 6 and tg.ones(2, 3).size() == (2, 3)
    assert tg.ones(2, 3).size(1) == 3  # .size is PyTorch's method


def test_tensor_ravel_astype_and_mod():
    t = tg.tensor([[5.5, -1.0], [2.0, 7.0]])
    assert t.ravel().tolist() == [5.5, -1.0, 2.0, 7.0]
    assert t.astype(np.int64).dtype is tg.int64 and t.astype("float64").dtype is tg.float64
    np.testing.assert_allclose((t % 3).numpy(), np.array([[2.5, 2.0], [2.0, 1.0]]))
    np.testing.assert_array_equal((tg.tensor([7, -7]) % 3).numpy(), [1, 2])


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda t: np.split(t, 4), "does not divide into 4"),
        (lambda t: np.pad(t, 1, mode="median"), "mode 'median'"),
        (lambda t: np.sort(t, order="x"), "'order'"),
        (lambda t: np.einsum("ij,jk", t, t[0]), "subscripts"),
    ],
)
def test_unsupported_forms_name_what_is_missing(call, message):
    with pytest.raises((TypeError, tg.ShapeError), match=message):
        call(tg.ones(3, 2))


class _NumpyModule(tg.nn.Module):
    """A forward written with NumPy functions on tensors."""

    def __init__(self):
        super().__init__()
        self.w = tg.nn.Parameter(tg.tensor(np.random.default_rng(5).standard_normal((3, 4))))

    def forward(self, x):
        h = np.einsum("...i,ij->...j", x, self.w)
        h = np.logaddexp(h, np.hypot(h, 1.0)) + np.arctan2(h, 2.0) + np.sinc(h)
        h = np.pad(np.cumsum(h, axis=1), ((0, 0), (1, 1)), mode="reflect")
        pieces = np.array_split(h, 2, axis=1)
        return np.linalg.norm(np.kron(pieces[0], np.diag(self.w[0, :2]))) + np.prod(pieces[1])


def test_numpy_functions_compiled_match_eager_with_backward():
    x = tg.tensor(np.random.default_rng(6).standard_normal((2, 3)))
    results = []
    for module in (_NumpyModule(), tg.compile(_NumpyModule())):
        out = module(x)
        out.backward()
        results.append((out.item(), module.w.grad.numpy()))
    np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-12)
    np.testing.assert_allclose(results[1][1], results[0][1], rtol=1e-10)


class _PerSidePad(tg.nn.Module):
    """np.pad with a constant per side of each axis, and the matrix norms made of SVDs."""

    def __init__(self):
        super().__init__()
        self.w = tg.nn.Parameter(tg.tensor(np.random.default_rng(8).standard_normal((3, 4))))

    def forward(self, x):
        padded = np.pad(x @ self.w, ((1, 2), (2, 0)), constant_values=((1.5, -2.0), (3.0, 0.5)))
        return np.linalg.norm(padded, "nuc") + np.linalg.norm(padded * padded, 2)


def test_per_side_pad_and_svd_norms_compiled_match_eager():
    tg.manual_seed(2)
    models = [_PerSidePad(), _PerSidePad()]
    x = tg.tensor(np.random.default_rng(9).standard_normal((2, 3)))
    padded = np.pad(x.numpy(), ((1, 2), (2, 0)), constant_values=((1.5, -2.0), (3.0, 0.5)))
    assert np.pad(x, ((1, 2), (2, 0)), constant_values=((1.5, -2.0), (3.0, 0.5))).tolist() == (
        padded.tolist()
    )
    eager, compiled = models[0](x), tg.compile(models[1])(x)
    np.testing.assert_allclose(compiled.item(), eager.item(), rtol=1e-12)
    eager.backward()
    compiled.backward()
    np.testing.assert_allclose(models[1].w.grad.numpy(), models[0].w.grad.numpy(), rtol=1e-10)

    def train_step(model, opt):
        opt.zero_grad()
        loss = model(x)
        loss.backward()
        opt.step()
        return loss

    opts = [tg.optim.Adam(m.parameters(), lr=0.01) for m in models]
    compiled_step = tg.compile(train_step)
    for _ in range(3):
        want, got = train_step(models[0], opts[0]), compiled_step(models[1], opts[1])
        np.testing.assert_allclose(got.item(), want.item(), rtol=1e-10)
    np.testing.assert_allclose(
        models[1].w.detach().numpy(), models[0].w.detach().numpy(), rtol=1e-10
    )


def test_pad_constants_that_do_not_fit_the_axes_raise():
    with pytest.raises(tg.ShapeError, match=r"constant_values=.*does not fit 2 axes"):
        np.pad(tg.ones(2, 3), 1, constant_values=((1, 2, 3),))
