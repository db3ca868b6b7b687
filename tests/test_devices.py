"""Devices: the CPU is accepted wherever PyTorch takes a device; any other raises naming it."""

import numpy as np
import pytest

import tracegrad as tg
from tracegrad import nn

FACTORIES = [
    lambda device: tg.zeros(2, 3, device=device),
    lambda device: tg.ones(2, device=device),
    lambda device: tg.empty(2, device=device),
    lambda device: tg.full((2,), 1.5, device=device),
    lambda device: tg.arange(4, device=device),
    lambda device: tg.linspace(0, 1, 3, device=device),
    lambda device: tg.eye(2, device=device),
    lambda device: tg.randn(2, device=device),
    lambda device: tg.rand(2, device=device),
    lambda device: tg.randint(0, 5, (2,), device=device),
    lambda device: tg.randperm(3, device=device),
    lambda device: tg.tensor([1.0], device=device),
    lambda device: tg.zeros_like(tg.ones(2), device=device),
    lambda device: tg.ones_like(tg.ones(2), device=device),
    lambda device: tg.full_like(tg.ones(2), 3.0, device=device),
    lambda device: tg.empty_like(tg.ones(2), device=device),
    lambda device: tg.randn_like(tg.ones(2), device=device),
    lambda device: tg.rand_like(tg.ones(2), device=device),
    lambda device: nn.Linear(3, 2, device=device),
    lambda device: nn.Conv2d(1, 2, 3, device=device),
    lambda device: nn.LayerNorm(4, device=device),
    lambda device: nn.Embedding(5, 2, device=device),
]


@pytest.mark.parametrize("factory", FACTORIES)
def test_cpu_is_accepted_and_cuda_refused_by_every_factory(factory):
    for cpu in (None, "cpu", "cpu:0", tg.device("cpu")):
        factory(cpu)
    with pytest.raises(RuntimeError, match=r"device 'cuda' is not available: .*CPU only"):
        factory("cuda")
    with pytest.raises(RuntimeError, match="unknown device 'gpu'"):
        factory("gpu")


def test_the_device_object():
    cpu = tg.device("cpu")
    assert cpu.type == "cpu" and cpu.index is None and str(cpu) == "cpu"
    assert repr(cpu) == "device(type='cpu')"
    assert cpu == tg.device(cpu) and hash(cpu) == hash(tg.device("cpu"))
    assert tg.device("cpu:0") == tg.device("cpu", 0) != cpu
    assert str(tg.device("cpu", 0)) == "cpu:0"
    t = tg.ones(2)
    assert t.device == cpu and t.is_cuda is False


@pytest.mark.parametrize(
    "spec, message",
    [
        (("cuda",), "device 'cuda' is not available"),
        (("cuda:1",), "device 'cuda:1' is not available"),
        (("cuda", 1), "device 'cuda:1' is not available"),
        ((0,), "device 'cuda:0' is not available"),
        (("mps",), "device 'mps' is not available"),
        (("tpu",), "unknown device 'tpu'"),
        (("cpu:x",), "invalid device string 'cpu:x'"),
    ],
)
def test_other_devices_raise_naming_them_and_the_line(spec, message):
    with pytest.raises(RuntimeError, match=message) as info:
        tg.device(*spec)
    assert "test_devices.py" in str(info.value)


def test_tensor_to_and_cuda():
    x = tg.tensor([1.0, 2.0])
    assert x.to("cpu") is x and x.to(tg.device("cpu")) is x and x.cpu() is x
    assert x.to(device="cpu", non_blocking=True) is x
    y = x.to("cpu", tg.float64)
    assert y.dtype is tg.float64 and y.tolist() == [1.0, 2.0]
    assert x.to(tg.device("cpu"), dtype=tg.float64).dtype is tg.float64
    for move in (lambda: x.to("cuda"), lambda: x.to(device="cuda:0"), x.cuda):
        with pytest.raises(RuntimeError, match="CPU only"):
            move()


def test_module_to_and_cuda():
    model = nn.Sequential(nn.Linear(3, 2), nn.ReLU())
    weight = model[0].weight.detach().numpy().copy()
    assert model.to("cpu") is model and model.to(tg.device("cpu")) is model
    assert model.to("cpu", tg.float64)[0].weight.dtype is tg.float64
    np.testing.assert_array_equal(model[0].weight.detach().numpy(), weight)
    for move in (lambda: model.to("cuda"), model.cuda):
        with pytest.raises(RuntimeError, match="CPU only"):
            move()


def test_layers_take_device_and_dtype_in_pytorchs_order():
    layer = nn.Linear(3, 2, True, "cpu", tg.float64)
    assert layer.weight.dtype is tg.float64 and layer.bias.dtype is tg.float64
    assert nn.Linear(3, 2, bias=False, dtype=tg.float64).bias is None


def test_the_cuda_module_says_no_gpu():
    assert tg.cuda.is_available() is False and tg.cuda.device_count() == 0
    tg.cuda.manual_seed(0)
    tg.cuda.manual_seed_all(0)
    device = tg.device("cuda" if tg.cuda.is_available() else "cpu")
    assert tg.randn(2, device=device).device == device


def test_as_tensor_takes_dtype_and_device_and_copies_only_when_it_must():
    obs = np.arange(3.0)
    t = tg.as_tensor(obs, device="cpu")
    assert t.dtype is tg.float64 and np.shares_memory(t.numpy(), obs)
    assert tg.as_tensor(t) is t and tg.as_tensor(t, dtype=tg.float32).dtype is tg.float32
    assert tg.as_tensor(obs, dtype=tg.float32, device=tg.device("cpu")).dtype is tg.float32
    assert tg.as_tensor([1, 2]).dtype is tg.int64
    with pytest.raises(RuntimeError, match="CPU only"):
        tg.as_tensor(obs, device="cuda")
