"""``cm.export(path)`` writes a standalone NumPy module (plus a .npz of parameters and
constants). It runs in a fresh Python where tracegrad cannot be imported and gives the same
outputs and gradients (compiled module) or loss, updated state and gradients (whole step)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tracegrad as tg
from tracegrad import nn, optim

TOL = 1e-10

# Runs in the subprocess: tracegrad is made unimportable before the exported module loads.
RUNNER = textwrap.dedent(
    """
    import importlib, json, os, sys
    sys.modules["tracegrad"] = None
    import numpy as np

    request = json.loads(sys.argv[2])
    for name in request.get("hidden", []):  # (modules the exported one must do without)
        sys.modules[name] = None
    sys.path.insert(0, os.path.dirname(sys.argv[1]))
    exported = importlib.import_module(os.path.basename(sys.argv[1])[: -len(".py")])
    inputs = [np.asarray(a, dtype=d) for a, d in request["inputs"]]
    params = list(exported.PARAMETERS.values())
    result = {"parameters": list(exported.PARAMETERS)}
    try:
        import tracegrad  # noqa: F401
    except ImportError:
        result["tracegrad_importable"] = False
    else:
        result["tracegrad_importable"] = True
    if request["kind"] == "forward":
        result["outputs"] = [np.asarray(o).tolist() for o in exported.forward(*inputs, *params)]
    elif request["kind"] == "module":
        outs = exported.forward(*inputs, *params)
        n_out = request["n_outputs"]
        # backward(saved..., cotangents...): saved values are forward outputs by name.
        by_name = dict(zip(request["forward_returns"], outs))
        saved = [by_name[n] for n in request["backward_params"][: request["n_saved"]]]
        cotangents = [np.asarray(a, dtype=d) for a, d in request["cotangents"]]
        grads = exported.backward(*saved, *cotangents)
        result["outputs"] = [o.tolist() for o in outs[:n_out]]
        result["grads"] = [g.tolist() for g in grads]
    else:
        outs = exported.step(*inputs, *params)
        result["outputs"] = [np.asarray(o).tolist() for o in outs]
    print(json.dumps(result))
    """
)


def header_signature(source: str, name: str) -> tuple[list[str], list[str]]:
    """Parameters and returns of ``name`` as the header comment documents them (on lines
    wrapped at 100 columns)."""
    header = " ".join(line[1:] for line in source.splitlines() if line.startswith("#"))
    match = re.search(rf"\b{name}\(([^)]*)\)\s*->\s*\(([^)]*)\)", header)
    assert match, f"the header documents {name}(...)"
    params, returns = (
        [s.strip() for s in group.split(",") if s.strip()] for group in match.groups()
    )
    return params, returns


def run_exported(path, request) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, str(path), json.dumps(request)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=path.parent,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def encode(t: tg.Tensor):
    return [t.detach().numpy().tolist(), t.dtype.name]


def assert_standalone(path):
    source = path.read_text()
    assert "import tracegrad" not in source and "from tracegrad" not in source
    assert path.with_suffix(".npz").exists()
    return source


def test_exported_module_runs_without_tracegrad(zoo, model_name, tmp_path):
    setup = zoo.build(model_name)
    cm = tg.compile(setup.model)
    out = cm(*setup.inputs)
    rng = np.random.default_rng(0)
    cotangent = tg.tensor(rng.standard_normal(tuple(out.shape)))
    (out * cotangent).sum().backward()
    expected_grads = [p.grad for p in setup.model.parameters()]

    path = cm.export(tmp_path / "model.py")
    assert path.exists()
    source = assert_standalone(path)
    fwd_params, fwd_returns = header_signature(source, "forward")
    bwd_params, _ = header_signature(source, "backward")
    n_inputs = len(setup.inputs)
    n_saved = len([p for p in bwd_params if p in fwd_returns[1:]])
    result = run_exported(
        path,
        {
            "kind": "module",
            "inputs": [encode(x) for x in setup.inputs],
            "n_outputs": 1,
            "forward_returns": fwd_returns,
            "backward_params": bwd_params,
            "n_saved": n_saved,
            "cotangents": [encode(cotangent)],
        },
    )
    assert result["tracegrad_importable"] is False
    assert len(result["parameters"]) == len(fwd_params) - n_inputs
    np.testing.assert_allclose(result["outputs"][0], out.detach().numpy(), rtol=TOL, atol=TOL)
    assert len(result["grads"]) == len(expected_grads)
    for got, want in zip(result["grads"], expected_grads, strict=True):
        np.testing.assert_allclose(got, want.numpy(), rtol=TOL, atol=TOL)


def make_step(zoo, model_name):
    setup = zoo.build(model_name)
    model = setup.model
    opt = optim.Adam(model.parameters(), lr=0.01)

    def train_step(*inputs):
        opt.zero_grad()
        loss = setup.loss(model(*inputs))
        loss.backward()
        opt.step()
        return loss

    return setup, opt, train_step


@pytest.mark.models("mlp", "cnn", "transformer", "ste")
def test_exported_whole_step_runs_without_tracegrad(zoo, model_name, tmp_path):
    setup_e, _, eager = make_step(zoo, model_name)
    setup_c, _, train_step = make_step(zoo, model_name)
    compiled = tg.compile(train_step)
    for _ in range(2):  # the second call compiles with .grad and optimizer state present
        eager(*setup_e.inputs)
        compiled(*setup_c.inputs)
    path = compiled.export(tmp_path / "step.py")
    source = assert_standalone(path)
    step_params, _ = header_signature(source, "step")

    # The reference: the next step run eagerly on an identical model and optimizer.
    loss = eager(*setup_e.inputs)
    graph = compiled.graph
    result = run_exported(path, {"kind": "step", "inputs": [encode(x) for x in setup_c.inputs]})
    assert result["tracegrad_importable"] is False
    outputs = [np.asarray(o) for o in result["outputs"]]
    np.testing.assert_allclose(outputs[0], loss.item(), rtol=TOL, atol=TOL)
    assert [p.replace(".", "_") for p in step_params] == [
        re.sub(r"\W", "_", v.name) for v in graph.inputs
    ]
    # Updated parameters: graph.updates maps an input's name to the output overwriting it.
    position = {id(v): i for i, v in enumerate(graph.outputs)}
    for name, p in setup_e.model.named_parameters():
        updated = [n for n in graph.updates if n.endswith("." + name)]
        assert len(updated) == 1, name
        got = outputs[position[id(graph.updates[updated[0]])]]
        np.testing.assert_allclose(got, p.detach().numpy(), rtol=TOL, atol=TOL, err_msg=name)
    # Gradients: each parameter's new .grad is one of the step's outputs.
    for name, p in setup_e.model.named_parameters():
        want = p.grad.numpy()
        assert any(
            o.shape == want.shape and np.allclose(o, want, rtol=TOL, atol=TOL) for o in outputs
        ), f"gradient of {name} among the exported step's outputs"
    # The in-process compiled step (untouched by the export) still matches.
    np.testing.assert_allclose(compiled(*setup_c.inputs).item(), loss.item(), rtol=TOL)


@pytest.mark.parametrize("hidden", [[], ["threadpoolctl"]])
def test_exported_threaded_step_runs_without_tracegrad(zoo, tmp_path, always_pays, hidden):
    """A step compiled with threads=2 (products on the pool) exports with the
    pool's helpers copied in, and runs without tracegrad, with or without threadpoolctl."""
    setup_e, _, eager = make_step(zoo, "mlp")
    setup_c, _, train_step = make_step(zoo, "mlp")
    compiled = tg.compile(train_step, threads=2)
    for _ in range(2):
        eager(*setup_e.inputs)
        compiled(*setup_c.inputs)
    path = compiled.export(tmp_path / "step.py")
    source = assert_standalone(path)
    assert "POOL.submit(" in source and "with one_blas_thread():" in source
    assert "def thread_pool(" in source
    loss = eager(*setup_e.inputs)
    request = {"kind": "step", "inputs": [encode(x) for x in setup_c.inputs], "hidden": hidden}
    result = run_exported(path, request)
    assert result["tracegrad_importable"] is False
    np.testing.assert_allclose(result["outputs"][0], loss.item(), rtol=TOL, atol=TOL)
    weights = [p.detach().numpy() for p in setup_e.model.parameters()]
    found = [any(np.shape(o) == w.shape and np.allclose(o, w, rtol=TOL) for o in result["outputs"])
             for w in weights]  # fmt: skip
    assert all(found)


def test_export_before_compiling_raises(zoo, tmp_path):
    setup = zoo.build("mlp")
    with pytest.raises(RuntimeError, match="call the compiled"):
        tg.compile(setup.model).export(tmp_path / "m.py")


def test_exported_forward_only_module(zoo, tmp_path):
    """Compiled under no_grad: only a forward is generated and exported."""
    setup = zoo.build("cnn")
    cm = tg.compile(setup.model)
    with tg.no_grad():
        out = cm(*setup.inputs)
    path = cm.export(tmp_path / "fwd.py")
    source = assert_standalone(path)
    assert "def backward" not in source
    result = run_exported(path, {"kind": "forward", "inputs": [encode(x) for x in setup.inputs]})
    assert result["tracegrad_importable"] is False
    np.testing.assert_allclose(result["outputs"][0], out.numpy(), rtol=TOL, atol=TOL)


def test_exported_module_without_erf_runs_without_scipy(tmp_path):
    """SciPy is imported by the erf kernel when it runs, not by the exported module."""
    tg.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
    cm = tg.compile(model)
    x = tg.randn(2, 3)
    out = cm(x)
    path = cm.export(tmp_path / "tanh_mlp.py")
    request = {"kind": "forward", "inputs": [encode(x)], "hidden": ["scipy"]}
    result = run_exported(path, request)
    np.testing.assert_allclose(result["outputs"][0], out.detach().numpy(), rtol=TOL, atol=TOL)
