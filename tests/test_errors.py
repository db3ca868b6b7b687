"""Bad input gets an exception a user can catch, naming the problem, shapes and their line."""

import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn


def test_shape_mismatch_names_op_and_both_shapes_and_user_line():
    with pytest.raises(tg.ShapeError) as info:
        tg.ones(2, 3) + tg.ones(4)
    message = str(info.value)
    assert "add" in message and "(2, 3)" in message and "(4,)" in message
    assert "test_errors.py" in message
    assert isinstance(info.value, RuntimeError) and isinstance(info.value, ValueError)


def test_matmul_mismatch():
    with pytest.raises(RuntimeError, match=r"matmul: shapes \(2, 3\) and \(4, 5\)"):
        tg.ones(2, 3) @ tg.ones(4, 5)


def test_linear_layer_mismatch_names_both_shapes():
    layer = nn.Linear(3, 2)
    with pytest.raises(tg.ShapeError, match=r"\(4, 5\).*\(2, 3\)"):
        layer(tg.ones(4, 5))


def test_float_targets_to_cross_entropy():
    with pytest.raises(TypeError, match=r"int64 class indices.*float32"):
        F.cross_entropy(tg.randn(4, 3), tg.zeros(4))


def test_cross_entropy_target_shape():
    with pytest.raises(tg.ShapeError, match=r"\(4, 3\).*\(4,\).*\(5,\)"):
        F.cross_entropy(tg.randn(4, 3), tg.zeros(5, dtype=tg.int64))


def test_integer_tensor_asking_for_grad():
    with pytest.raises(tg.DTypeError, match=r"floating point.*int64"):
        tg.zeros(3, dtype=tg.int64, requires_grad=True)


def test_exp_of_bool_or_int_promotes_but_log_of_float_needed_ops_work():
    assert tg.tensor([1, 2]).exp().dtype == tg.float32


def test_conv_channel_mismatch():
    with pytest.raises(tg.ShapeError, match=r"3 channels.*expects 4"):
        F.conv2d(tg.ones(1, 3, 5, 5), tg.ones(2, 4, 3, 3))


def test_out_of_range_dim():
    with pytest.raises(tg.ShapeError, match=r"dim 3 is out of range"):
        tg.ones(2, 2).sum(3)
