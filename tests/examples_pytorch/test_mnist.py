"""Port of pytorch/examples mnist/main.py: its Net (two convolutions, max pooling, two dropouts,
two linear layers, log_softmax) trained by its step (nll_loss, Adadelta, StepLR), run eagerly,
as a compiled module, as a compiled whole step and in PyTorch. Sizes as in the example, a few
small batches of synthetic 28 x 28 images."""

import numpy as np
from harness import MODES, assert_runs_close, run, run_port

import tracegrad as tg


def make_net(lib, dropout=(0.25, 0.5)):
    """The example's Net, written against ``lib``; ``dropout`` 0 for the comparison with
    PyTorch (the two libraries draw different masks)."""
    nn, F = lib.nn, lib.nn.functional

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 32, 3, 1)
            self.conv2 = nn.Conv2d(32, 64, 3, 1)
            self.dropout1 = nn.Dropout(dropout[0])
            self.dropout2 = nn.Dropout(dropout[1])
            self.fc1 = nn.Linear(9216, 128)
            self.fc2 = nn.Linear(128, 10)

        def forward(self, x):
            x = self.conv1(x)
            x = F.relu(x)
            x = self.conv2(x)
            x = F.relu(x)
            x = F.max_pool2d(x, 2)
            x = self.dropout1(x)
            x = lib.flatten(x, 1)
            x = self.fc1(x)
            x = F.relu(x)
            x = self.dropout2(x)
            x = self.fc2(x)
            output = F.log_softmax(x, dim=1)
            return output

    return Net()


def make(lib, dropout=(0.0, 0.0)):
    model = make_net(lib, dropout)
    optimizer = lib.optim.Adadelta(model.parameters(), lr=1.0)
    scheduler = lib.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    return {"model": model, "optimizer": optimizer, "scheduler": scheduler}


def step(lib, state, data, target):
    """The body of the example's train() loop."""
    model, optimizer = state["model"], state["optimizer"]
    model.train()
    optimizer.zero_grad()
    output = model(data)
    loss = lib.nn.functional.nll_loss(output, target)
    loss.backward()
    optimizer.step()
    return loss


def batches(count=3, size=4, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (
            rng.standard_normal((size, 1, 28, 28)).astype(np.float32),
            rng.integers(0, 10, size),
        )
        for _ in range(count)
    ]


def test_mnist_matches_torch_eager_and_compiled():
    run_port(make, step, batches())


def test_mnist_with_its_dropout_compiled_equals_eager():
    """With the example's dropout, compiled runs draw the masks eager draws (same seed)."""
    initial = {"model": {k: v.numpy() for k, v in make_net(tg).state_dict().items()}}

    def make_dropping(lib):
        return make(lib, dropout=(0.25, 0.5))

    runs = {m: run(tg, m, make_dropping, step, batches(), initial, 3) for m in ("eager", *MODES)}
    for mode in MODES:
        assert_runs_close(runs[mode], runs["eager"], 1e-5, 1e-6, f"{mode} vs eager")
    without = run(tg, "eager", make, step, batches(), initial, 3)
    assert not np.allclose(without.losses, runs["eager"].losses)
