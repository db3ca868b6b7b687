"""pytorch/examples mnist_forward_forward/main.py: Hinton's forward-forward training, each
Layer (an nn.Linear subclass with its own Adam) trained on positive data (the true label
overlaid on the input) against negative data (a wrong label), and prediction by the label of
the highest goodness. Synthetic data: 24 features (the first 10 carry the overlaid label),
64 examples; the wrong labels come from NumPy (the example draws them with torch.randint).

Two tests: the program as written (Net.train, Net.predict) eagerly against PyTorch, and one
layer's training iteration (Layer.train's loop body) through the harness, eager / compiled
module / compiled step / PyTorch."""

from types import SimpleNamespace

import numpy as np
from harness import import_torch, run_port

import tracegrad as tg

args = SimpleNamespace(lr=0.03, threshold=2.0, epochs=4, log_interval=1000)


def program(lib):
    """The example's definitions, with ``torch`` as ``lib``."""
    nn = lib.nn
    device = lib.device("cpu")

    def overlay_y_on_x(x, y, classes=10):
        x_ = x.clone()
        x_[:, :classes] *= 0.0
        x_[range(x.shape[0]), y] = x.max()
        return x_

    class Net(lib.nn.Module):
        def __init__(self, dims):
            super().__init__()
            self.layers = []
            for d in range(len(dims) - 1):
                self.layers = self.layers + [Layer(dims[d], dims[d + 1]).to(device)]

        def predict(self, x):
            goodness_per_label = []
            for label in range(10):
                h = overlay_y_on_x(x, label)
                goodness = []
                for layer in self.layers:
                    h = layer(h)
                    goodness = goodness + [h.pow(2).mean(1)]
                goodness_per_label += [sum(goodness).unsqueeze(1)]
            goodness_per_label = lib.cat(goodness_per_label, 1)
            return goodness_per_label.argmax(1)

        def train(self, x_pos, x_neg):
            h_pos, h_neg = x_pos, x_neg
            for i, layer in enumerate(self.layers):
                h_pos, h_neg = layer.train(h_pos, h_neg)

    class Layer(nn.Linear):
        def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
            super().__init__(in_features, out_features, bias, device, dtype)
            self.relu = lib.nn.ReLU()
            self.opt = lib.optim.Adam(self.parameters(), lr=args.lr)
            self.threshold = args.threshold
            self.num_epochs = args.epochs

        def forward(self, x):
            x_direction = x / (x.norm(2, 1, keepdim=True) + 1e-4)
            return self.relu(lib.mm(x_direction, self.weight.T) + self.bias.unsqueeze(0))

        def train(self, x_pos, x_neg):
            for i in range(self.num_epochs):
                g_pos = self.forward(x_pos).pow(2).mean(1)
                g_neg = self.forward(x_neg).pow(2).mean(1)
                loss = lib.log1p(
                    lib.exp(lib.cat([-g_pos + self.threshold, g_neg - self.threshold]))
                ).mean()
                self.opt.zero_grad()
                loss.backward()
                self.opt.step()
            return self.forward(x_pos).detach(), self.forward(x_neg).detach()

    return SimpleNamespace(overlay_y_on_x=overlay_y_on_x, Net=Net, Layer=Layer)


def data(seed=0, n=64, features=24):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.standard_normal((n, features)).astype(np.float32)
    x[:, 10:13] += y[:, None] * 0.3  # features that tell the label
    y_neg = (y + rng.integers(1, 10, n)) % 10
    return x, y, y_neg


def run_program(lib, weights):
    lib.manual_seed(0)
    p = program(lib)
    x, y, y_neg = (lib.tensor(a) for a in data())
    net = p.Net([24, 16, 16])
    for layer, (w, b) in zip(net.layers, weights, strict=True):
        layer.load_state_dict({"weight": lib.tensor(w), "bias": lib.tensor(b)})
    x_pos = p.overlay_y_on_x(x, y)
    x_neg = p.overlay_y_on_x(x, y_neg)
    net.train(x_pos, x_neg)
    predictions = net.predict(x)
    params = [(layer.weight.detach().numpy(), layer.bias.detach().numpy()) for layer in net.layers]
    return x_pos.numpy(), predictions.numpy(), params


def initial_weights():
    rng = np.random.default_rng(3)
    return [
        (rng.uniform(-0.2, 0.2, (16, 24)).astype(np.float32), np.zeros(16, np.float32)),
        (rng.uniform(-0.25, 0.25, (16, 16)).astype(np.float32), np.zeros(16, np.float32)),
    ]


def test_overlay_writes_the_label_through_a_range_index():
    p = program(tg)
    x, y, _ = data()
    out = p.overlay_y_on_x(tg.tensor(x), tg.tensor(y)).numpy()
    expected = x.copy()
    expected[:, :10] = 0.0
    expected[np.arange(len(y)), y] = x.max()
    np.testing.assert_array_equal(out, expected)


def test_forward_forward_program_matches_torch():
    x_pos, predictions, params = run_program(tg, initial_weights())
    torch = import_torch()
    if torch is None:
        return
    t_pos, t_predictions, t_params = run_program(torch, initial_weights())
    np.testing.assert_array_equal(x_pos, t_pos)
    for (w, b), (tw, tb) in zip(params, t_params, strict=True):
        np.testing.assert_allclose(w, tw, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(b, tb, rtol=1e-4, atol=1e-5)
    assert (predictions == t_predictions).mean() > 0.95  # (argmax of near ties may differ)


def make(lib):
    layer = program(lib).Layer(24, 16)
    return {"layer": layer, "opt": layer.opt}


def step(lib, state, x_pos, x_neg):
    """Layer.train's loop body (``self`` is the layer, its ``opt`` the optimizer)."""
    layer, threshold = state["layer"], args.threshold
    g_pos = layer(x_pos).pow(2).mean(1)
    g_neg = layer(x_neg).pow(2).mean(1)
    loss = lib.log1p(lib.exp(lib.cat([-g_pos + threshold, g_neg - threshold]))).mean()
    state["opt"].zero_grad()
    loss.backward()
    state["opt"].step()
    return loss


def test_layer_training_step_through_the_harness():
    p = program(tg)
    x, y, y_neg = data(seed=1)
    x_pos = p.overlay_y_on_x(tg.tensor(x), tg.tensor(y)).numpy()
    x_neg = p.overlay_y_on_x(tg.tensor(x), tg.tensor(y_neg)).numpy()
    runs = run_port(make, step, [(x_pos, x_neg)] * 4)
    assert runs["eager"].losses[-1] < runs["eager"].losses[0]
