"""pytorch/examples vae/main.py: the VAE and its loss (BCE + KL) as written, trained with Adam
on synthetic images in [0, 1] (4 per batch, MNIST's 784 pixels).

reparameterize draws ``torch.randn_like(std)``: PyTorch's and tracegrad's draws differ, so the
comparison with PyTorch replaces ``randn_like`` in both libraries with one fixed noise of the
requested shape; with the real draws, tracegrad's eager, compiled-module and compiled-step
runs are compared among themselves (equal draws under one seed)."""

import numpy as np
import pytest
from harness import (
    ADAM_TOLERANCES,
    assert_runs_close,
    import_torch,
    module_states,
    run,
    run_port,
)

import tracegrad as tg


def vae_class(lib):
    nn, F = lib.nn, lib.nn.functional

    class VAE(nn.Module):
        def __init__(self):
            super(VAE, self).__init__()

            self.fc1 = nn.Linear(784, 400)
            self.fc21 = nn.Linear(400, 20)
            self.fc22 = nn.Linear(400, 20)
            self.fc3 = nn.Linear(20, 400)
            self.fc4 = nn.Linear(400, 784)

        def encode(self, x):
            h1 = F.relu(self.fc1(x))
            return self.fc21(h1), self.fc22(h1)

        def reparameterize(self, mu, logvar):
            std = lib.exp(0.5 * logvar)
            eps = lib.randn_like(std)
            return mu + eps * std

        def decode(self, z):
            h3 = F.relu(self.fc3(z))
            return lib.sigmoid(self.fc4(h3))

        def forward(self, x):
            mu, logvar = self.encode(x.view(-1, 784))
            z = self.reparameterize(mu, logvar)
            return self.decode(z), mu, logvar

    return VAE


# Reconstruction + KL divergence losses summed over all elements and batch
def loss_function(lib, recon_x, x, mu, logvar):
    BCE = lib.nn.functional.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    # 0.5 * sum(1 + log(sigma^2) - mu^2 - sigma^2)
    KLD = -0.5 * lib.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return BCE + KLD


def make(lib):
    model = vae_class(lib)()
    return {"model": model, "optimizer": lib.optim.Adam(model.parameters(), lr=1e-3)}


def step(lib, state, data):
    model, optimizer = state["model"], state["optimizer"]
    optimizer.zero_grad()
    recon_batch, mu, logvar = model(data)
    loss = loss_function(lib, recon_batch, data, mu, logvar)
    loss.backward()
    optimizer.step()
    return loss


def images(count=3, seed=0):
    rng = np.random.default_rng(seed)
    return [(rng.uniform(0.0, 1.0, (4, 1, 28, 28)).astype(np.float32),) for _ in range(count)]


def fixed_noise(lib):
    def randn_like(t):
        noise = np.random.default_rng(7).standard_normal(tuple(t.shape)).astype(np.float32)
        return lib.tensor(noise)

    return randn_like


def test_vae_with_fixed_noise_matches_compiled_and_torch(monkeypatch):
    monkeypatch.setattr(tg, "randn_like", fixed_noise(tg))
    torch = import_torch()
    if torch is not None:
        monkeypatch.setattr(torch, "randn_like", fixed_noise(torch))
    runs = run_port(make, step, images(1) * 4, **ADAM_TOLERANCES)
    assert runs["eager"].losses[-1] < runs["eager"].losses[0]  # (one batch, seen 4 times)


def test_vae_with_random_noise_compiled_matches_eager():
    tg.manual_seed(0)
    initial = module_states(make(tg))
    batches = images(seed=1)
    eager = run(tg, "eager", make, step, batches, initial, seed=5)
    for mode in ("module", "step"):
        compiled = run(tg, mode, make, step, batches, initial, seed=5)
        assert_runs_close(compiled, eager, 1e-5, 1e-5, f"{mode} vs eager")


@pytest.mark.parametrize("seed", [0, 1])
def test_reparameterize_draws_the_requested_moments(seed):
    tg.manual_seed(seed)
    model = vae_class(tg)()
    mu, logvar = tg.full((2000, 20), 1.5), tg.full((2000, 20), np.log(0.25))
    z = model.reparameterize(mu, logvar).numpy()
    assert abs(z.mean() - 1.5) < 0.02 and abs(z.std() - 0.5) < 0.02
