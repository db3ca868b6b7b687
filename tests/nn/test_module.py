"""nn.Module API: registration, traversal, modes, state dicts, dtype conversion, containers,
repr, and PyTorch's default initialisation and nn.init formulas."""

import math
from collections import OrderedDict

import numpy as np
import pytest

import tracegrad as tg
from tracegrad import nn
from tracegrad.nn import init


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(3, 4)
        self.scale = nn.Parameter(tg.ones(4))
        self.register_buffer("running", tg.zeros(4))
        self.register_buffer("scratch", tg.zeros(2), persistent=False)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.layer(x)) * self.scale + self.running


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.head = nn.Linear(4, 2, bias=False)

    def forward(self, x):
        return self.head(self.block(x))


# --- registration --------------------------------------------------------------------------------


def test_attribute_assignment_registers_parameters_and_modules():
    b = Block()
    assert list(b._parameters) == ["scale"]
    assert list(b._modules) == ["layer", "act"]
    assert isinstance(b.layer, nn.Linear)
    assert b.scale.requires_grad and b.scale.is_leaf
    # plain attributes and plain tensors are not parameters
    b.note = "hello"
    b.plain = tg.ones(2)
    assert b.note == "hello"
    assert [n for n, _ in b.named_parameters()] == ["scale", "layer.weight", "layer.bias"]


def test_assignment_before_super_init_is_a_clear_error():
    class Bad(nn.Module):
        def __init__(self):
            self.w = nn.Parameter(tg.ones(1))

    with pytest.raises(AttributeError, match="super"):
        Bad()


def test_reassigning_a_parameter_with_a_plain_tensor_raises_type_error():
    lin = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="weight"):
        lin.weight = tg.ones(2, 2)
    lin.bias = None
    assert [n for n, _ in lin.named_parameters()] == ["weight"]


def test_replacing_a_submodule_keeps_its_slot_and_deleting_removes_it():
    net = Net()
    net.head = nn.Linear(4, 5)
    assert net.head.out_features == 5
    del net.head
    assert [n for n, _ in net.named_children()] == ["block"]
    with pytest.raises(AttributeError):
        _ = net.head


def test_register_buffer_persistent_and_not():
    b = Block()
    assert [n for n, _ in b.named_buffers()] == ["running", "scratch"]
    assert "running" in b.state_dict() and "scratch" not in b.state_dict()
    assert not b.running.requires_grad
    # assigning to a buffer's name replaces the buffer
    b.running = tg.full((4,), 2.0)
    np.testing.assert_array_equal(next(iter(b.buffers())).numpy(), np.full(4, 2.0))
    # re-registering a non-persistent name as persistent makes it persistent, as in PyTorch
    b.register_buffer("scratch", tg.ones(2))
    assert "scratch" in b.state_dict()


def test_register_buffer_rejects_bad_or_taken_names():
    lin = nn.Linear(2, 2)
    for name in ["weight", "a.b", ""]:
        with pytest.raises(KeyError):
            lin.register_buffer(name, tg.zeros(2))
    lin.register_buffer("stats", tg.zeros(2))
    lin.register_buffer("stats", tg.ones(2))  # re-registering a buffer replaces it
    assert lin.stats.tolist() == [1.0, 1.0]


def test_buffers_are_used_in_forward_but_not_parameters():
    b = Block()
    with tg.no_grad():
        b.scale.fill_(0.0)
    b.running = tg.arange(4).float()
    out = b(tg.randn(5, 3))
    np.testing.assert_array_equal(out.detach().numpy(), np.tile(np.arange(4.0), (5, 1)))
    assert all(p is not b.running for p in b.parameters())


# --- traversal -----------------------------------------------------------------------------------


def test_named_parameters_order_is_registration_order_depth_first():
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["block.scale", "block.layer.weight", "block.layer.bias", "head.weight"]
    assert [p for p in net.parameters()] == [p for _, p in net.named_parameters()]
    assert next(net.named_parameters(prefix="model"))[0] == "model.block.scale"
    assert [n for n, _ in net.named_parameters(recurse=False)] == []


def test_shared_parameters_and_modules_are_listed_once():
    enc = nn.Linear(3, 3)
    net = nn.Sequential(enc, nn.ReLU(), enc)
    assert len(list(net.parameters())) == 2
    assert [n for n, _ in net.named_parameters()] == ["0.weight", "0.bias"]

    tied = nn.Module()
    tied.a = nn.Linear(2, 2)
    tied.b = nn.Linear(2, 2)
    tied.b.weight = tied.a.weight
    assert [n for n, _ in tied.named_parameters()] == ["a.weight", "a.bias", "b.bias"]
    assert len(list(tied.modules())) == 3


def test_state_dict_keeps_every_name_of_shared_tensors_like_pytorch():
    enc = nn.Linear(3, 3)
    net = nn.Sequential(enc, nn.ReLU(), enc)
    assert list(net.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    net.load_state_dict(net.state_dict())


def test_children_and_modules():
    net = Net()
    assert list(net.children()) == [net.block, net.head]
    mods = list(net.modules())
    assert mods == [net, net.block, net.block.layer, net.block.act, net.head]
    names = [n for n, _ in net.named_modules()]
    assert names == ["", "block", "block.layer", "block.act", "head"]


def test_buffers_recurse():
    net = Net()
    assert [n for n, _ in net.named_buffers()] == ["block.running", "block.scratch"]
    assert len(list(net.buffers(recurse=False))) == 0


def test_train_and_eval_propagate_to_every_submodule():
    net = Net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    net.train(False)
    assert not net.block.act.training


def test_module_zero_grad_set_to_none_and_zeros():
    net = Net()
    net(tg.randn(2, 3)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad(set_to_none=False)
    for p in net.parameters():
        assert p.grad is not None and tuple(p.grad.shape) == tuple(p.shape)
        assert not p.grad.numpy().any()
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_call_runs_forward():
    net = Net()
    x = tg.randn(5, 3)
    np.testing.assert_array_equal(net(x).detach().numpy(), net.forward(x).detach().numpy())
    with pytest.raises(NotImplementedError):
        nn.Module()(x)


# --- state dicts ---------------------------------------------------------------------------------


def test_state_dict_keys_like_pytorch():
    net = Net()
    assert list(net.state_dict()) == [
        "block.scale",
        "block.running",
        "block.layer.weight",
        "block.layer.bias",
        "head.weight",
    ]
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    assert list(seq.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_state_dict_values_are_detached_and_share_memory():
    lin = nn.Linear(2, 3)
    sd = lin.state_dict()
    assert not sd["weight"].requires_grad
    np.testing.assert_array_equal(sd["weight"].numpy(), lin.weight.detach().numpy())
    with tg.no_grad():
        lin.weight.fill_(3.0)
    assert (sd["weight"].numpy() == 3.0).all()


def test_load_state_dict_copies_values_into_existing_parameters():
    src, dst = Net(), Net()
    weight_obj = dst.head.weight
    result = dst.load_state_dict(src.state_dict())
    assert dst.head.weight is weight_obj  # loaded in place, the object is kept
    for (n1, a), (n2, b) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert n1 == n2
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    missing, unexpected = result
    assert list(missing) == [] and list(unexpected) == []
    # a copy, not an alias: changing the source later leaves the destination alone
    with tg.no_grad():
        src.head.weight.fill_(7.0)
    assert not (dst.head.weight.detach().numpy() == 7.0).any()


def test_load_state_dict_accepts_numpy_arrays():
    lin = nn.Linear(2, 2)
    lin.load_state_dict({"weight": np.eye(2), "bias": np.array([1.0, 2.0])})
    np.testing.assert_array_equal(lin.weight.detach().numpy(), np.eye(2, dtype=np.float32))
    assert lin.weight.dtype == tg.float32


def test_load_state_dict_strict_missing_and_unexpected_keys():
    net = Net()
    sd = dict(net.state_dict())
    del sd["head.weight"]
    with pytest.raises(RuntimeError, match=r"head\.weight"):
        net.load_state_dict(sd)
    sd = dict(net.state_dict())
    sd["extra.bias"] = tg.zeros(2)
    with pytest.raises(RuntimeError, match=r"extra\.bias"):
        net.load_state_dict(sd)
    # non-strict loads what matches and reports the rest
    del sd["head.weight"]
    result = net.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["head.weight"] and result.unexpected_keys == ["extra.bias"]


def test_load_state_dict_size_mismatch_message():
    lin = nn.Linear(2, 3)
    sd = {"weight": tg.zeros(3, 4), "bias": tg.zeros(3)}
    with pytest.raises(RuntimeError) as info:
        lin.load_state_dict(sd)
    msg = str(info.value)
    assert "size mismatch for weight" in msg and "(3, 4)" in msg and "(3, 2)" in msg


def test_load_state_dict_bumps_version_so_saved_values_are_caught():
    lin = nn.Linear(2, 1)
    # the input needs grad, so its rule reads the weight (as in PyTorch, the weight is saved
    # only when some gradient that will be computed reads it)
    loss = (lin(tg.randn(4, 2, requires_grad=True)) ** 2).sum()
    lin.load_state_dict({k: v.detach().numpy() * 2 for k, v in lin.state_dict().items()})
    with pytest.raises(RuntimeError):
        loss.backward()


# --- dtype conversion ----------------------------------------------------------------------------


def test_to_float64_and_double_convert_parameters_and_buffers():
    net = Net()
    before = net.head.weight.detach().numpy().copy()
    assert net.to(tg.float64) is net
    assert all(p.dtype == tg.float64 for p in net.parameters())
    assert all(b.dtype == tg.float64 for b in net.buffers())
    np.testing.assert_array_equal(net.head.weight.detach().numpy(), before.astype(np.float64))
    out = net(tg.randn(2, 3).double())
    assert out.dtype == tg.float64
    out.sum().backward()
    assert net.head.weight.grad.dtype == tg.float64

    lin = nn.Linear(2, 2).double()
    assert lin.weight.dtype == tg.float64 and lin.bias.dtype == tg.float64
    assert nn.Linear(2, 2).to(dtype=tg.float64).weight.dtype == tg.float64
    assert lin.to("cpu") is lin and lin.weight.dtype == tg.float64
    assert isinstance(lin.weight, nn.Parameter) and lin.weight.requires_grad


def test_to_leaves_integer_buffers_alone():
    m = nn.Module()
    m.register_buffer("count", tg.tensor([1, 2]))
    m.double()
    assert m.count.dtype == tg.int64


def test_layers_accept_dtype_argument():
    assert nn.Linear(2, 3, dtype=tg.float64).weight.dtype == tg.float64
    assert nn.Conv2d(1, 2, 3, dtype=tg.float64).bias.dtype == tg.float64


# --- containers ----------------------------------------------------------------------------------


def test_sequential_indexing_slicing_len_iteration():
    layers = [nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)]
    seq = nn.Sequential(*layers)
    assert len(seq) == 3
    assert seq[0] is layers[0] and seq[-1] is layers[2]
    head = seq[:2]
    assert isinstance(head, nn.Sequential) and len(head) == 2 and head[1] is layers[1]
    # a slice keeps the layers' names, as in PyTorch
    assert list(seq[1:].state_dict()) == ["2.weight", "2.bias"]
    assert list(seq) == layers
    x = tg.randn(4, 2)
    expected = layers[2](layers[1](layers[0](x)))
    np.testing.assert_array_equal(seq(x).detach().numpy(), expected.detach().numpy())
    seq.append(nn.Sigmoid())
    assert len(seq) == 4 and "3.weight" not in seq.state_dict()
    with pytest.raises(IndexError):
        seq[10]


def test_sequential_from_ordered_dict_uses_the_names():
    seq = nn.Sequential(OrderedDict([("fc", nn.Linear(2, 2)), ("act", nn.Tanh())]))
    assert list(seq.state_dict()) == ["fc.weight", "fc.bias"]
    assert isinstance(seq.act, nn.Tanh) and isinstance(seq[0], nn.Linear)


@pytest.mark.parametrize("container", [nn.Sequential, lambda *ms: nn.ModuleList(ms)])
def test_an_item_assigned_replaces_the_module_in_its_place_like_pytorch(container):
    seq = container(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    seq[1] = nn.Tanh()
    seq[-1] = nn.Linear(2, 3)
    assert [type(m).__name__ for m in seq] == ["Linear", "Tanh", "Linear"]
    assert list(seq.state_dict())[-1] == "2.bias" and seq[2].out_features == 3
    with pytest.raises(IndexError, match="index 3 is out of range for 3 modules"):
        seq[3] = nn.ReLU()


def test_module_list_registers_and_indexes():
    ml = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    assert len(ml) == 3 and len(list(ml.parameters())) == 6
    ml.append(nn.Linear(2, 1))
    ml.extend([nn.ReLU()])
    assert len(ml) == 5 and isinstance(ml[-1], nn.ReLU) and isinstance(ml[1:3], nn.ModuleList)
    assert [n for n, _ in ml.named_parameters()][-2:] == ["3.weight", "3.bias"]

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    s = Stack()
    assert next(iter(s.state_dict())) == "layers.0.weight"
    assert s(tg.randn(3, 2)).shape == (3, 2)


def test_repr_like_pytorch():
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Sequential(nn.Linear(3, 1, bias=False)))
    assert repr(seq) == (
        "Sequential(\n"
        "  (0): Linear(in_features=2, out_features=3, bias=True)\n"
        "  (1): ReLU()\n"
        "  (2): Sequential(\n"
        "    (0): Linear(in_features=3, out_features=1, bias=False)\n"
        "  )\n"
        ")"
    )
    assert repr(nn.Conv2d(1, 8, 3)) == "Conv2d(1, 8, kernel_size=(3, 3), stride=(1, 1))"
    assert repr(nn.Conv2d(2, 4, (3, 5), stride=2, padding=1, dilation=2, groups=2, bias=False)) == (
        "Conv2d(2, 4, kernel_size=(3, 5), stride=(2, 2), padding=(1, 1), dilation=(2, 2), "
        "groups=2, bias=False)"
    )
    assert repr(nn.MaxPool2d(2)) == (
        "MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)"
    )
    assert repr(nn.Flatten()) == "Flatten(start_dim=1, end_dim=-1)"
    assert repr(nn.LayerNorm(4)) == (
        "LayerNorm((4,), eps=1e-05, elementwise_affine=True, bias=True)"
    )
    assert repr(nn.Embedding(10, 3)) == "Embedding(10, 3)"
    assert repr(nn.Dropout(0.1)) == "Dropout(p=0.1, inplace=False)"
    assert repr(nn.GELU("tanh")) == "GELU(approximate='tanh')"
    assert repr(nn.Softmax(dim=1)) == "Softmax(dim=1)"
    assert repr(nn.MSELoss()) == "MSELoss()"


# --- default initialisation ----------------------------------------------------------------------


def _uniform_check(values, bound):
    values = np.asarray(values, np.float64).ravel()
    assert np.abs(values).max() <= bound * (1 + 1e-6)
    assert np.abs(values).max() > 0.99 * bound  # the whole range is used
    assert abs(values.mean()) < 0.02 * bound
    assert values.std() == pytest.approx(bound / math.sqrt(3), rel=0.02)


def test_linear_default_init_is_uniform_in_inverse_sqrt_fan_in():
    tg.manual_seed(0)
    lin = nn.Linear(400, 300)
    bound = 1 / math.sqrt(400)
    _uniform_check(lin.weight.detach().numpy(), bound)
    bias = lin.bias.detach().numpy()
    assert np.abs(bias).max() <= bound and bias.std() == pytest.approx(
        bound / math.sqrt(3), rel=0.15
    )
    assert lin.weight.dtype == tg.float32 and tuple(lin.weight.shape) == (300, 400)


def test_conv2d_default_init_uses_fan_in_over_groups():
    tg.manual_seed(1)
    conv = nn.Conv2d(32, 64, (3, 5), groups=4)
    assert tuple(conv.weight.shape) == (64, 8, 3, 5)
    bound = 1 / math.sqrt(8 * 3 * 5)
    _uniform_check(conv.weight.detach().numpy(), bound)
    assert np.abs(conv.bias.detach().numpy()).max() <= bound
    assert np.abs(conv.bias.detach().numpy()).max() > 0.5 * bound


def test_layer_norm_and_embedding_default_init():
    ln = nn.LayerNorm((3, 4))
    np.testing.assert_array_equal(ln.weight.detach().numpy(), np.ones((3, 4)))
    np.testing.assert_array_equal(ln.bias.detach().numpy(), np.zeros((3, 4)))
    assert nn.LayerNorm(4, elementwise_affine=False).weight is None
    tg.manual_seed(2)
    emb = nn.Embedding(1000, 64).weight.detach().numpy()
    assert abs(emb.mean()) < 0.02 and emb.std() == pytest.approx(1.0, rel=0.02)


def test_default_init_is_reproducible_under_manual_seed():
    tg.manual_seed(123)
    a = nn.Linear(5, 4).weight.detach().numpy().copy()
    tg.manual_seed(123)
    b = nn.Linear(5, 4).weight.detach().numpy().copy()
    c = nn.Linear(5, 4).weight.detach().numpy().copy()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(b, c)


# --- nn.init -------------------------------------------------------------------------------------


def _param(*shape):
    return nn.Parameter(tg.zeros(*shape))


def test_calculate_fan_and_gain():
    assert init.calculate_fan_in_and_fan_out(_param(5, 3)) == (3, 5)
    assert init.calculate_fan_in_and_fan_out(_param(8, 4, 3, 2)) == (24, 48)
    with pytest.raises(ValueError):
        init.calculate_fan_in_and_fan_out(_param(5))
    assert init.calculate_gain("relu") == pytest.approx(math.sqrt(2))
    assert init.calculate_gain("tanh") == pytest.approx(5 / 3)
    assert init.calculate_gain("linear") == 1.0
    assert init.calculate_gain("leaky_relu", 0.2) == pytest.approx(math.sqrt(2 / 1.04))
    assert init.calculate_gain("leaky_relu") == pytest.approx(math.sqrt(2 / (1 + 0.01**2)))
    with pytest.raises(ValueError):
        init.calculate_gain("swishy")


@pytest.mark.parametrize(
    ("fn", "kwargs", "kind", "scale"),
    [
        (init.kaiming_uniform_, {}, "uniform", math.sqrt(6 / 300)),
        (init.kaiming_uniform_, {"mode": "fan_out"}, "uniform", math.sqrt(6 / 200)),
        (init.kaiming_uniform_, {"nonlinearity": "relu"}, "uniform", math.sqrt(6 / 300)),
        (init.kaiming_uniform_, {"a": math.sqrt(5)}, "uniform", 1 / math.sqrt(300)),
        (init.kaiming_normal_, {}, "normal", math.sqrt(2 / 300)),
        (init.kaiming_normal_, {"mode": "fan_out"}, "normal", math.sqrt(2 / 200)),
        (init.kaiming_normal_, {"nonlinearity": "tanh"}, "normal", 5 / 3 / math.sqrt(300)),
        (init.xavier_uniform_, {}, "uniform", math.sqrt(6 / 500)),
        (init.xavier_uniform_, {"gain": 2.0}, "uniform", 2 * math.sqrt(6 / 500)),
        (init.xavier_normal_, {}, "normal", math.sqrt(2 / 500)),
        (init.uniform_, {"a": -0.5, "b": 0.5}, "uniform", 0.5),
        (init.normal_, {"std": 0.3}, "normal", 0.3),
    ],
)
def test_init_distributions(fn, kwargs, kind, scale):
    tg.manual_seed(3)
    w = _param(200, 300)
    assert fn(w, **kwargs) is w
    values = w.detach().numpy().astype(np.float64)
    if kind == "uniform":
        _uniform_check(values, scale)
    else:
        assert abs(values.mean()) < 0.01 * scale
        assert values.std() == pytest.approx(scale, rel=0.02)
        # Gaussian tails: about 0.27% beyond 3 std
        assert 0.0015 < (np.abs(values) > 3 * scale).mean() < 0.004
    assert w.requires_grad and w.is_leaf and w.grad_fn is None


def test_init_uniform_range_and_normal_mean():
    tg.manual_seed(4)
    w = init.uniform_(_param(100, 100), 2.0, 3.0).detach().numpy()
    assert w.min() >= 2.0 and w.max() <= 3.0 and w.mean() == pytest.approx(2.5, abs=0.01)
    w = init.normal_(_param(100, 100), mean=-1.0, std=0.1).detach().numpy()
    assert w.mean() == pytest.approx(-1.0, abs=0.005)


def test_init_constants_and_conv_fans():
    w = _param(3, 4)
    init.constant_(w, 0.25)
    assert (w.detach().numpy() == 0.25).all()
    init.ones_(w)
    assert (w.detach().numpy() == 1).all()
    init.zeros_(w)
    assert not w.detach().numpy().any()
    tg.manual_seed(5)
    conv = _param(64, 16, 3, 3)
    init.kaiming_normal_(conv, nonlinearity="relu")
    assert conv.detach().numpy().std() == pytest.approx(math.sqrt(2 / 144), rel=0.03)


def test_init_bumps_the_version_counter():
    w = _param(3, 3)
    loss = (w * w).sum()
    init.ones_(w)
    with pytest.raises(RuntimeError):
        loss.backward()


def test_init_is_reproducible_under_manual_seed():
    tg.manual_seed(9)
    a = init.xavier_normal_(_param(4, 4)).detach().numpy().copy()
    tg.manual_seed(9)
    b = init.xavier_normal_(_param(4, 4)).detach().numpy().copy()
    np.testing.assert_array_equal(a, b)
