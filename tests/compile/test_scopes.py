"""Module scopes: every traced node records the module call that made it (path and class)
beside the user's line; passes keep them, gradients take their forward node's, fused kernels
their members' common one; explain(), pictures and the text form show them."""

import inspect

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim, scopes, viz
from tracegrad.scopes import Scope, common_scope


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.fc(x))  # FC LINE


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = MLP()
        self.layers = nn.Sequential(nn.Linear(8, 8), nn.Tanh())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = self.layers(self.mlp(x))
        return self.head(h * 2.0)  # HEAD LINE


def _line_of(marker: str) -> int:
    lines = inspect.getsource(inspect.getmodule(Net)).splitlines()
    return 1 + next(i for i, text in enumerate(lines) if marker in text)


def _compiled(net, passes="default"):
    cm = tg.compile(net, passes=passes)
    cm(tg.randn(5, 4)).sum().backward()
    return cm


def test_every_node_of_a_nested_model_records_its_module_path_and_class():
    tg.manual_seed(0)
    graph = _compiled(Net(), passes=None).graph
    scoped = {(n.op, str(n.scope)) for n in graph.nodes}
    for op, scope in [
        ("matmul", "mlp.fc (Linear)"),
        ("relu", "mlp.act (ReLU)"),
        ("matmul", "layers.0 (Linear)"),
        ("tanh", "layers.1 (Tanh)"),
        ("matmul", "head (Linear)"),
    ]:
        assert (op, scope) in scoped
    mul = next(n for n in graph.nodes if n.op == "mul")
    assert mul.scope is None  # made by the outermost module itself (unnamed), as in torch.fx
    relu = next(n for n in graph.nodes if n.op == "relu")
    assert [str(s) for s in relu.scope.chain()] == ["mlp (MLP)", "mlp.act (ReLU)"]


def test_the_line_is_the_users_or_the_forward_of_a_tracegrad_layer():
    tg.manual_seed(0)
    graph = _compiled(Net(), passes=None).graph
    by_scope = {str(n.scope): n.location for n in graph.nodes}
    this_file = inspect.getsourcefile(Net)
    # a layer the user's forward called: the user's line
    assert (by_scope["mlp.fc (Linear)"].filename, by_scope["mlp.fc (Linear)"].lineno) == (
        this_file, _line_of("FC LINE"),
    )  # fmt: skip
    assert by_scope["head (Linear)"].lineno == _line_of("HEAD LINE")
    # a layer nn.Sequential called: still the user's line calling the Sequential
    assert by_scope["layers.1 (Tanh)"].filename == this_file
    # a tracegrad model compiled as a whole: the line in the layer's own forward
    seq = _compiled(nn.Sequential(nn.Linear(4, 8), nn.ReLU()), passes=None).graph
    relu = next(n for n in seq.nodes if n.op == "relu")
    assert relu.location.filename == inspect.getsourcefile(nn.ReLU)
    assert "relu" in relu.location.line and str(relu.scope) == "1 (ReLU)"


def test_gradients_take_the_scope_of_the_forward_node_they_differentiate():
    tg.manual_seed(0)
    cm = _compiled(Net(), passes=None)
    grads = {n.grad_of: n.scope for n in cm.backward_graph.nodes if n.grad_of}
    assert str(grads["relu"]) == "mlp.act (ReLU)" and str(grads["tanh"]) == "layers.1 (Tanh)"


def test_passes_keep_scopes_and_a_fused_kernel_takes_its_members_common_one():
    tg.manual_seed(0)
    cm = _compiled(Net())
    fused = {n.attrs["kind"]: n.scope for n in cm.graph.nodes if n.op == "fused"}
    # mlp.fc's matmul and add with mlp.act's relu: both inside mlp
    assert str(fused["linear matmul add relu"]) == "mlp (MLP)"
    assert str(fused["linear matmul add tanh"]) == "layers (Sequential)"
    unscoped = {n.op for g in (cm.graph, cm.backward_graph) for n in g.nodes if n.scope is None}
    # only the outermost module's own `h * 2.0`, and a backward kernel spanning modules
    assert unscoped == {"constant", "mul", "fused"}
    spanning = [n for n in cm.backward_graph.nodes if n.op == "fused" and n.scope is None]
    assert all("tanh_grad" in n.attrs["kind"] or "relu_grad" in n.attrs["kind"] for n in spanning)


def test_common_scope():
    net = Scope("net", "Net")
    a, b = net.inside("net.a", "Linear"), net.inside("net.b", "ReLU")
    assert common_scope([a, b]) == net and common_scope([a, a]) == a
    assert common_scope([a, None]) is None and common_scope([a, Scope("x", "Net")]) is None


def test_a_training_step_names_paths_as_the_parameters_are_named():
    tg.manual_seed(0)
    model = Net()
    opt = optim.SGD(model.parameters(), lr=0.1)

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    compiled = tg.compile(step, passes=None)
    compiled(tg.randn(5, 4), tg.tensor([0, 1, 2, 0, 1]))
    paths = {n.scope.path for n in compiled.graph.nodes if n.scope is not None}
    assert {"model", "model.mlp.fc", "model.layers.1", "model.head"} <= paths
    assert "model.head.weight" in {v.name for v in compiled.graph.inputs}


def test_text_form_explain_and_pictures_show_scopes():
    tg.manual_seed(0)
    cm = _compiled(Net())
    text = str(cm.graph)
    assert "# mlp (MLP) " in text and "# head (Linear) " in text
    assert "fused: mlp (MLP) " in cm.explain()
    svg = viz.to_svg(cm.views())
    assert "module: mlp (MLP)" in svg
    html = viz.to_html(cm.views(), cm.code)
    assert '"scope": [["mlp", "MLP"]]' in html


def test_scopes_are_entered_only_while_tracing():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append((scopes.recording(), scopes.current()))
            return x * 2.0

    outer = nn.Sequential(Probe())
    outer(tg.ones(2))
    tg.trace(outer, tg.ones(2))
    assert seen[0] == (False, None)
    assert seen[1] == (True, Scope("0", "Probe"))
    assert not scopes.recording() and scopes.current() is None
