"""The tape engine: accumulation, retain_graph, create_graph, grad(), version checks, errors."""

import numpy as np
import pytest

import tracegrad as tg


def test_backward_on_non_scalar_needs_gradient():
    x = tg.ones(3, requires_grad=True)
    y = x * 2
    with pytest.raises(RuntimeError, match=r"implicitly created only for scalar outputs"):
        y.backward()


def test_backward_with_gradient_is_a_vector_jacobian_product():
    x = tg.tensor([1.0, 2.0, 3.0], requires_grad=True)
    y = x * x
    y.backward(gradient=tg.tensor([1.0, 0.5, 2.0]))
    assert x.grad.tolist() == [2.0, 2.0, 12.0]


def test_gradient_of_wrong_shape_is_refused():
    x = tg.ones(3, requires_grad=True)
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        (x * 2).backward(tg.ones(2))


def test_gradients_accumulate_on_leaves_across_backward_calls():
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    (x * 3).sum().backward()
    (x * x).sum().backward()
    assert x.grad.tolist() == [3.0 + 2.0, 3.0 + 4.0]


def test_shared_subexpression_gradients_are_summed():
    x = tg.tensor(2.0, requires_grad=True)
    y = x * x
    z = y * y + y  # x^4 + x^2
    z.backward()
    assert x.grad.item() == 4 * 8 + 2 * 2


def test_broadcast_gradients_are_reduced_to_input_shapes():
    a = tg.ones(3, 1, requires_grad=True)
    b = tg.ones(4, requires_grad=True)
    (a * b).sum().backward()
    assert a.grad.shape == (3, 1) and a.grad.tolist() == [[4.0]] * 3
    assert b.grad.shape == (4,) and b.grad.tolist() == [3.0] * 4


def test_second_backward_without_retain_graph_raises():
    x = tg.ones(2, requires_grad=True)
    y = (x.exp() * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match=r"retain_graph=True"):
        y.backward()


def test_retain_graph_allows_a_second_backward():
    x = tg.ones(2, requires_grad=True)
    y = (x.exp() * x).sum()
    y.backward(retain_graph=True)
    first = x.grad.clone()
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * first.numpy())


def test_grad_of_grad_of_tanh_is_analytic():
    x = tg.tensor([-0.7, 0.1, 1.3], dtype=tg.float64, requires_grad=True)
    (g,) = tg.autograd.grad(x.tanh().sum(), x, create_graph=True)
    (gg,) = tg.autograd.grad(g.sum(), x)
    t = np.tanh(x.detach().numpy())
    np.testing.assert_allclose(g.detach().numpy(), 1 - t**2, rtol=1e-12)
    np.testing.assert_allclose(gg.numpy(), -2 * t * (1 - t**2), rtol=1e-12)


def test_third_order_through_backward_with_create_graph():
    x = tg.tensor(0.3, dtype=tg.float64, requires_grad=True)
    y = x**4
    y.backward(create_graph=True)  # x.grad = 4 x^3, itself differentiable
    (g2,) = tg.autograd.grad(x.grad, x, create_graph=True)
    (g3,) = tg.autograd.grad(g2, x)
    assert g2.item() == pytest.approx(12 * 0.3**2)
    assert g3.item() == pytest.approx(24 * 0.3)


def test_autograd_grad_leaves_dot_grad_untouched_and_reports_unused_inputs():
    x = tg.ones(2, requires_grad=True)
    unused = tg.ones(2, requires_grad=True)
    (gx,) = tg.autograd.grad((x * 3).sum(), x)
    assert gx.tolist() == [3.0, 3.0] and x.grad is None
    with pytest.raises(RuntimeError, match=r"allow_unused"):
        tg.autograd.grad((x * 3).sum(), [x, unused])
    gx, gu = tg.autograd.grad((x * 3).sum(), [x, unused], allow_unused=True)
    assert gu is None


def test_autograd_grad_with_respect_to_an_intermediate():
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    h = x * 2
    y = (h * h).sum()
    (gh,) = tg.autograd.grad(y, h)
    assert gh.tolist() == [4.0, 8.0]


def test_no_grad_and_enable_grad():
    x = tg.ones(2, requires_grad=True)
    with tg.no_grad():
        y = x * 2
        with tg.enable_grad():
            z = x * 2
    assert not y.requires_grad and y.grad_fn is None
    assert z.requires_grad

    @tg.no_grad()
    def double(t):
        return t * 2

    assert not double(x).requires_grad
    assert tg.is_grad_enabled()


def test_detach_cuts_the_graph_and_shares_memory():
    x = tg.ones(2, requires_grad=True)
    d = (x * 2).detach()
    assert not d.requires_grad and d.is_leaf
    y = x * 1
    y_detached = y.detach()
    with tg.no_grad():
        y_detached.add_(1)
    assert y.tolist() == [2.0, 2.0]


def test_modifying_a_saved_tensor_in_place_raises_at_backward_naming_the_op():
    x = tg.ones(3, requires_grad=True)
    y = x.exp()
    y.add_(1)
    with pytest.raises(RuntimeError, match=r"modified by an inplace operation.*'exp'"):
        y.sum().backward()


def test_modifying_an_input_saved_by_mul_raises():
    x = tg.ones(3, requires_grad=True)
    h = x * 1
    z = h * x
    h.mul_(2)
    with pytest.raises(RuntimeError, match=r"input 'x' of 'mul'"):
        z.sum().backward()


def test_inplace_on_non_leaf_is_differentiated():
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    w = tg.tensor([3.0, 4.0], requires_grad=True)
    y = x * 1
    y.mul_(w)  # the old value of y is kept for w's gradient
    y.add_(1)
    y.sum().backward()
    assert x.grad.tolist() == [3.0, 4.0] and w.grad.tolist() == [1.0, 2.0]


def test_unsaved_value_may_change_in_place():
    x = tg.ones(3, requires_grad=True)
    h = x * 1
    z = h + 1  # add's rule reads neither operand
    h.mul_(5)
    z.sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 1.0]


INPLACE_THROUGH_A_CONSTANT = {
    # v - 2 v: sub_ scales its operand, and mul by a constant needs only the constant
    "sub_ with alpha": lambda v, eye: v.sub_(v, alpha=2),
    "add_ of v * 1": lambda v, eye: v.add_(v * 1),
    "matmul by a constant": lambda v, eye: v.add_(v @ eye),
}


@pytest.mark.parametrize(
    "update", INPLACE_THROUGH_A_CONSTANT.values(), ids=list(INPLACE_THROUGH_A_CONSTANT)
)
def test_values_only_a_constants_gradient_reads_may_change_in_place(update):
    # PyTorch saves only what the rules that will run read: v * c for a constant c keeps c, not
    # v, so changing v in place afterwards is no error, and the gradient is the same.
    torch = pytest.importorskip("torch")
    start = np.array([0.5, -1.0, 2.0])
    grads = []
    for lib in (tg, torch):
        leaf = lib.tensor(start, requires_grad=True)
        v = leaf.clone()
        update(v, lib.eye(3, dtype=lib.float64) if lib is torch else tg.tensor(np.eye(3)))
        (v * v).sum().backward()
        grads.append(leaf.grad.numpy())
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-12)


def test_a_value_the_other_operands_gradient_reads_is_still_guarded():
    x = tg.ones(3, requires_grad=True)
    w = tg.ones(3, requires_grad=True)
    h = x * 1
    z = w * h  # w's gradient reads h
    h.sub_(h, alpha=2)
    with pytest.raises(RuntimeError, match=r"input 'y' of 'mul'"):
        z.sum().backward()


def test_retain_grad_keeps_gradient_of_intermediate():
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    h = x * 3
    h.retain_grad()
    (h * h).sum().backward()
    assert h.grad.tolist() == [6.0, 12.0]


def test_backward_inputs_restricts_accumulation():
    a = tg.ones(2, requires_grad=True)
    b = tg.ones(2, requires_grad=True)
    (a * b).sum().backward(inputs=[a])
    assert a.grad.tolist() == [1.0, 1.0] and b.grad is None


def test_requires_grad_propagation_and_is_leaf():
    a = tg.ones(2)
    b = tg.ones(2, requires_grad=True)
    assert not (a * 2).requires_grad
    c = a * b
    assert c.requires_grad and not c.is_leaf and b.is_leaf
    assert (a > 0).requires_grad is False
    assert not c.argmax().requires_grad
