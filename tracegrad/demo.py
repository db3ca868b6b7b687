"""``tracegrad demo``: train an MLP on the bundled handwritten digits with a compiled step.

The demo's speed depends mostly on how many threads BLAS runs its small matrix products on:
``--threads 1`` (``tg.set_num_threads(1)``) is usually fastest on a busy machine, and the
summary says which setting it ran with."""

from __future__ import annotations

import time
from pathlib import Path

from tqdm import tqdm

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim


def digits_model() -> nn.Module:
    """The demo's 64-128-10 MLP."""
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def run_demo(
    epochs: int = 30,
    picture="tracegrad-demo.html",
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    threads: int | None = None,
) -> str:
    """Train, evaluate and draw; returns the closing summary (the progress bar shows loss and
    accuracy as training goes).

    Args:
        epochs: passes over the 1,437 training digits.
        picture: where to write the HTML picture of the compiled step's graphs and code.
        batch_size: digits per training step.
        seed: the seed of ``tg.manual_seed`` (initial weights and shuffling).
        progress: whether to show the progress bar.
        threads: BLAS threads to run with (``tg.set_num_threads``) for the demo's duration;
            None keeps the process's setting.

    Returns:
        The summary: training time, BLAS threads, test accuracy and the picture's path.
    """
    if threads is None:
        return _train_and_draw(epochs, picture, batch_size, seed, progress)
    previous = tg.get_num_threads()
    tg.set_num_threads(threads)
    try:
        return _train_and_draw(epochs, picture, batch_size, seed, progress)
    finally:
        tg.set_num_threads(previous)


def _train_and_draw(epochs, picture, batch_size, seed, progress) -> str:
    tg.manual_seed(seed)
    x_train, y_train, x_test, y_test = tg.data.load_digits()
    loader = tg.data.DataLoader(
        tg.data.TensorDataset(x_train, y_train), batch_size, shuffle=True, drop_last=True
    )
    model = digits_model()
    opt = optim.Adam(model.parameters(), lr=3e-3)

    def train_step(x, y):
        opt.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        return loss, logits

    step = tg.compile(train_step)
    start = time.perf_counter()
    bar = tqdm(range(epochs), desc="training", unit="epoch", disable=not progress)
    for _ in bar:
        hits = seen = 0
        for x, y in loader:
            loss, logits = step(x, y)
            hits += int((logits.argmax(1) == y).sum().item())
            seen += len(y)
        bar.set_postfix(loss=f"{loss.item():.4f}", accuracy=f"{hits / seen:.3f}")
    seconds = time.perf_counter() - start
    model.eval()
    with tg.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    written = step.visualize(picture)
    return (
        f"trained {epochs} epochs on {len(y_train)} digits in {seconds:.1f} s "
        f"(one compiled function per step, {len(step.specializations)} specializations)\n"
        f"BLAS threads: {tg.get_num_threads()} (set with --threads N or tg.set_num_threads)\n"
        f"test accuracy: {accuracy:.1%} on {len(y_test)} held-out digits\n"
        f"graphs and generated code: {Path(written).resolve()} (open it in a browser)"
    )
