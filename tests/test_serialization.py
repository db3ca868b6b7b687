"""tg.save / tg.load: round trips of tensors, state dicts and checkpoints; files that are not
checkpoints (corrupt, truncated, foreign, pickled) raise naming the file, and run no code."""

import io
import json
import pickle
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim
from tracegrad.serialization import STRUCTURE


def _round_trip(obj, **load_args):
    buffer = io.BytesIO()
    tg.save(obj, buffer)
    buffer.seek(0)
    return tg.load(buffer, **load_args)


def _model():
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def test_values_and_containers_round_trip():
    t = tg.tensor([[1.5, -2.0]], dtype=tg.float64, requires_grad=True)
    obj = {
        "t": t,
        "again": t,
        "ints": tg.tensor([1, 2, 3]),
        "mask": tg.tensor([True, False]),
        "scalar": tg.tensor(3.0),
        "array": np.arange(6, dtype=np.int32).reshape(2, 3),
        7: [None, True, 2, 2.5, float("inf"), "s", (1, (2.0, "x"))],
        (1, "k"): OrderedDict(b=1, a=2),
    }
    out = _round_trip(obj)
    assert list(out) == list(obj)
    assert out["t"].dtype is tg.float64 and out["t"].requires_grad and out["t"].is_leaf
    np.testing.assert_array_equal(out["t"].detach().numpy(), [[1.5, -2.0]])
    assert out["again"] is out["t"]  # one tensor saved twice loads as one
    assert out["ints"].dtype is tg.int64 and out["ints"].tolist() == [1, 2, 3]
    assert out["mask"].dtype is tg.bool and out["mask"].tolist() == [True, False]
    assert out["scalar"].shape == () and out["scalar"].item() == 3.0
    assert out["array"].dtype == np.int32 and out["array"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert out[7] == [None, True, 2, 2.5, float("inf"), "s", (1, (2.0, "x"))]
    assert type(out[7][2]) is int and type(out[7][3]) is float
    assert type(out[(1, "k")]) is OrderedDict and list(out[(1, "k")].items()) == [
        ("b", 1),
        ("a", 2),
    ]


def test_parameters_load_as_parameters():
    p = nn.Parameter(tg.ones(2, 3))
    out = _round_trip([p])
    assert isinstance(out[0], nn.Parameter) and out[0].requires_grad


def test_paths_str_and_pathlib(tmp_path):
    tg.save({"x": tg.arange(3)}, str(tmp_path / "a.pt"))
    tg.save({"x": tg.arange(4)}, tmp_path / "b.pt")
    assert tg.load(str(tmp_path / "a.pt"))["x"].tolist() == [0, 1, 2]
    assert tg.load(tmp_path / "b.pt", map_location="cpu")["x"].tolist() == [0, 1, 2, 3]


def test_model_state_dict_round_trip_gives_identical_outputs(tmp_path):
    tg.manual_seed(0)
    model, x = _model(), tg.randn(5, 4)
    tg.save(model.state_dict(), tmp_path / "model.pt")
    tg.manual_seed(1)
    fresh = _model()
    assert not np.array_equal(fresh(x).detach().numpy(), model(x).detach().numpy())
    fresh.load_state_dict(tg.load(tmp_path / "model.pt", weights_only=True))
    np.testing.assert_array_equal(fresh(x).detach().numpy(), model(x).detach().numpy())


def _train(model, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def test_adam_checkpoint_continues_training_identically(tmp_path):
    tg.manual_seed(0)
    batches = [(tg.randn(6, 4), tg.randint(0, 3, (6,))) for _ in range(10)]
    model = _model()
    opt = optim.Adam(model.parameters(), lr=1e-2)
    _train(model, opt, batches[:5])
    checkpoint = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}
    tg.save(checkpoint, tmp_path / "ckpt.pt")
    _train(model, opt, batches[5:])  # the run that never stopped

    tg.manual_seed(5)
    resumed = _model()
    resumed_opt = optim.Adam(resumed.parameters(), lr=0.5)
    loaded = tg.load(tmp_path / "ckpt.pt", map_location=tg.device("cpu"))
    assert loaded["epoch"] == 3
    resumed.load_state_dict(loaded["model"])
    resumed_opt.load_state_dict(loaded["optimizer"])
    assert resumed_opt.param_groups[0]["lr"] == 1e-2
    assert resumed_opt.param_groups[0]["betas"] == (0.9, 0.999)
    _train(resumed, resumed_opt, batches[5:])
    for (name, a), b in zip(model.state_dict().items(), resumed.state_dict().values()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)


def test_map_location_forms():
    obj = {"x": tg.ones(2)}
    for where in ["cpu", tg.device("cpu"), {"cuda:0": "cpu"}, lambda storage, loc: storage]:
        assert _round_trip(obj, map_location=where)["x"].tolist() == [1.0, 1.0]
    with pytest.raises(RuntimeError, match="CPU only"):
        _round_trip(obj, map_location="cuda")
    with pytest.raises(RuntimeError, match="CPU only"):
        _round_trip(obj, map_location={"cpu": "cuda:1"})


def test_unsaveable_values_name_where_they_are():
    with pytest.raises(TypeError, match=r"obj\['model'\], a Sequential.*state_dict"):
        tg.save({"model": _model()}, io.BytesIO())
    with pytest.raises(TypeError, match="Python objects"):
        tg.save(np.array([object()]), io.BytesIO())


def _saved_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    tg.save(obj, buffer)
    return buffer.getvalue()


def test_truncated_file_raises_naming_the_file(tmp_path):
    data = _saved_bytes({"w": tg.randn(100, 10)})
    for cut in (len(data) // 2, 30, 0):
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(data[:cut])
        with pytest.raises(
            tg.SerializationError, match=f"cannot load '{path}'.*(truncated|corrupt)"
        ):
            tg.load(path)


def test_corrupted_tensor_bytes_fail_the_checksum(tmp_path):
    data = bytearray(_saved_bytes({"w": tg.zeros(1000)}))
    data[len(data) // 2] ^= 0xFF  # inside the stored .npy
    path = tmp_path / "bad.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(tg.SerializationError, match="CRC"):
        tg.load(path)


def test_other_formats_are_refused(tmp_path):
    (tmp_path / "text.pt").write_text("hello")
    np.savez(tmp_path / "arrays.npz", a=np.ones(2))
    with zipfile.ZipFile(tmp_path / "torch.pt", "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02N.")
    cases = {
        "text.pt": "not a file tg.save wrote",
        "arrays.npz": "not a file tg.save wrote",
        "torch.pt": "PyTorch checkpoint.*does not unpickle",
    }
    for name, message in cases.items():
        with pytest.raises(tg.SerializationError, match=message):
            tg.load(tmp_path / name)
    with pytest.raises(FileNotFoundError):
        tg.load(tmp_path / "missing.pt")


def test_a_structure_that_lies_about_a_tensor_is_refused():
    data = _saved_bytes({"w": tg.zeros(3)})
    header = json.loads(zipfile.ZipFile(io.BytesIO(data)).read(STRUCTURE))
    header["root"]["dict"][0][1]["tensor"]["shape"] = [4]
    with pytest.raises(tg.SerializationError, match=r"holds float32\[3\], the structure says"):
        tg.load(io.BytesIO(_rewritten(data, {STRUCTURE: json.dumps(header).encode()})))


def _rewritten(data: bytes, replace: dict) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, replace.get(name, src.read(name)))
    return out.getvalue()


def _leave_mark(path):
    with open(path, "w") as f:
        f.write("the payload ran")


class _Payload:
    """Unpickling this writes ``marker``: the side effect a malicious file would have."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (_leave_mark, (self.marker,))


def test_a_pickle_payload_is_never_run(tmp_path):
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(_Payload(marker)))  # the payload works when unpickled...
    assert marker.exists()
    marker.unlink()
    pickled = io.BytesIO()
    np.save(pickled, np.array([_Payload(marker)], dtype=object), allow_pickle=True)
    member = "tracegrad/tensors/0.npy"
    path = tmp_path / "evil.pt"
    path.write_bytes(_rewritten(_saved_bytes({"w": tg.zeros(3)}), {member: pickled.getvalue()}))
    with pytest.raises(tg.SerializationError, match=f"{member}: .*allow_pickle=False"):
        tg.load(path, weights_only=False)
    assert not marker.exists()  # ...and loading the file did not unpickle it
    path.write_bytes(pickle.dumps({"w": _Payload(marker)}))  # torch.save's old format
    with pytest.raises(tg.SerializationError, match="is a pickle"):
        tg.load(path)
    assert not marker.exists()
