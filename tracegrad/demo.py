"""``tracegrad demo``: train an MLP on the bundled handwritten digits with a compiled step."""

from __future__ import annotations

import time
from pathlib import Path

from tqdm import tqdm

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim


def digits_model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def run_demo(
    epochs: int = 30,
    picture="tracegrad-demo.html",
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
) -> str:
    """Train, evaluate and draw; returns the closing summary (the progress bar shows loss and
    accuracy as training goes)."""
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
        f"test accuracy: {accuracy:.1%} on {len(y_test)} held-out digits\n"
        f"graphs and generated code: {Path(written).resolve()} (open it in a browser)"
    )
