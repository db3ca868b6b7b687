"""Port of pytorch/examples super_resolution: model.py's Net (four convolutions with orthogonal
initialization, ReLU, PixelShuffle) trained by main.py's step (MSELoss, Adam), run eagerly, as
a compiled module, as a compiled whole step and in PyTorch. Sizes as in the example (upscale
factor 3), small synthetic images."""

import numpy as np
from harness import run_port

import tracegrad as tg

UPSCALE = 3
LR = 0.001  # main.py --lr (default 0.01, at which the first steps on random images overshoot)


def make_net(lib, upscale_factor):
    nn, init = lib.nn, lib.nn.init

    class Net(nn.Module):
        def __init__(self, upscale_factor):
            super().__init__()

            self.relu = nn.ReLU()
            self.conv1 = nn.Conv2d(1, 64, (5, 5), (1, 1), (2, 2))
            self.conv2 = nn.Conv2d(64, 64, (3, 3), (1, 1), (1, 1))
            self.conv3 = nn.Conv2d(64, 32, (3, 3), (1, 1), (1, 1))
            self.conv4 = nn.Conv2d(32, upscale_factor**2, (3, 3), (1, 1), (1, 1))
            self.pixel_shuffle = nn.PixelShuffle(upscale_factor)

            self._initialize_weights()

        def forward(self, x):
            x = self.relu(self.conv1(x))
            x = self.relu(self.conv2(x))
            x = self.relu(self.conv3(x))
            x = self.pixel_shuffle(self.conv4(x))
            return x

        def _initialize_weights(self):
            init.orthogonal_(self.conv1.weight, init.calculate_gain("relu"))
            init.orthogonal_(self.conv2.weight, init.calculate_gain("relu"))
            init.orthogonal_(self.conv3.weight, init.calculate_gain("relu"))
            init.orthogonal_(self.conv4.weight)

    return Net(upscale_factor)


def make(lib):
    model = make_net(lib, upscale_factor=UPSCALE)
    criterion = lib.nn.MSELoss()
    optimizer = lib.optim.Adam(model.parameters(), lr=LR)
    return {"model": model, "criterion": criterion, "optimizer": optimizer}


def step(lib, state, input, target):
    """The body of main.py's train() loop."""
    model, criterion, optimizer = state["model"], state["criterion"], state["optimizer"]
    optimizer.zero_grad()
    loss = criterion(model(input), target)
    loss.backward()
    optimizer.step()
    return loss


def batches(count=3, size=2, side=8, seed=0):
    rng = np.random.default_rng(seed)
    big = side * UPSCALE
    return [
        (
            rng.uniform(0, 1, (size, 1, side, side)).astype(np.float32),
            rng.uniform(0, 1, (size, 1, big, big)).astype(np.float32),
        )
        for _ in range(count)
    ]


def test_super_resolution_matches_torch_eager_and_compiled():
    runs = run_port(make, step, batches())
    assert runs["eager"].losses[-1] < runs["eager"].losses[0]


def test_orthogonal_initialization_as_in_pytorch():
    """init.orthogonal_ (which the example calls): rows (or columns, for a wide matrix) of
    the flattened weight orthonormal, times the gain."""
    tg.manual_seed(0)
    model = make_net(tg, UPSCALE)
    gain = tg.nn.init.calculate_gain("relu")
    for conv, scale in ((model.conv1, gain), (model.conv2, gain), (model.conv4, 1.0)):
        matrix = conv.weight.detach().numpy().reshape(conv.weight.shape[0], -1)
        gram = matrix @ matrix.T if matrix.shape[0] <= matrix.shape[1] else matrix.T @ matrix
        np.testing.assert_allclose(gram, np.eye(len(gram)) * scale**2, atol=1e-5)
