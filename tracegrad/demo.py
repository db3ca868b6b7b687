"""``tracegrad demo``: train an MLP on the bundled handwritten digits with a compiled step.

Launched by ``mpiexec -n N tracegrad demo``, it trains data-parallel: each process reads its
share of every batch (``DistributedSampler``) and the gradients are averaged
(``DistributedDataParallel``); rank 0 shows the progress, writes the picture and returns the
summary, the other ranks stay quiet.

The demo's speed depends mostly on how many threads BLAS runs its small matrix products on:
``--threads 1`` (``tg.set_num_threads(1)``) is usually fastest on a busy machine, and the
summary says which setting it ran with."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from tqdm import tqdm

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import distributed, nn, optim
from tracegrad.nn.parallel import DistributedDataParallel


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
    with _process_group() as (rank, world):
        loader = _loader(tg.data.TensorDataset(x_train, y_train), batch_size, seed, world)
        model = digits_model()
        trained = DistributedDataParallel(model) if world > 1 else model
        opt = optim.Adam(model.parameters(), lr=3e-3)
        step = _compiled_step(trained, opt)
        start = time.perf_counter()
        bar = tqdm(range(epochs), desc="training", unit="epoch", disable=not progress or rank)
        for epoch in bar:
            if world > 1:
                loader.sampler.set_epoch(epoch)
            hits = seen = 0
            for x, y in loader:
                loss, logits = step(x, y)
                hits += int((logits.argmax(1) == y).sum().item())
                seen += len(y)
            bar.set_postfix(loss=f"{loss.item():.4f}", accuracy=f"{hits / seen:.3f}")
        seconds = time.perf_counter() - start
        if rank != 0:  # every rank holds the same model: rank 0 alone reports
            return ""
    model.eval()
    with tg.no_grad():
        accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
    written = step.visualize(picture)
    parallel = f", data-parallel on {world} processes" if world > 1 else ""
    return (
        f"trained {epochs} epochs on {len(y_train)} digits in {seconds:.1f} s{parallel} "
        f"(one compiled function per step, {len(step.specializations)} specializations)\n"
        f"BLAS threads: {tg.get_num_threads()} (set with --threads N or tg.set_num_threads)\n"
        f"test accuracy: {accuracy:.1%} on {len(y_test)} held-out digits\n"
        f"graphs and generated code: {Path(written).resolve()} (open it in a browser)"
    )


@contextlib.contextmanager
def _process_group():
    """Yields (rank, world size) of the process group: the MPI world when launched by mpiexec,
    else this process alone; joined here, and left at the end, unless the caller had joined."""
    joined = not distributed.is_initialized()
    if joined:
        distributed.init_process_group()
    try:
        yield distributed.get_rank(), distributed.get_world_size()
    finally:
        if joined:
            distributed.destroy_process_group()


def _loader(dataset, batch_size: int, seed: int, world: int):
    """Batches of ``batch_size`` digits in all: one process shuffles them all; each of
    ``world`` processes reads its ``batch_size // world`` of every batch."""
    if world == 1:
        return tg.data.DataLoader(dataset, batch_size, shuffle=True, drop_last=True)
    if batch_size % world:
        raise ValueError(
            f"the demo's batch size {batch_size} must divide evenly among {world} processes"
        )
    sampler = tg.data.DistributedSampler(dataset, shuffle=True, seed=seed)
    return tg.data.DataLoader(dataset, batch_size // world, drop_last=True, sampler=sampler)


def _compiled_step(model, opt):
    """The training step, compiled into one function (with DistributedDataParallel, gradient
    averaging included); it returns the loss and the logits."""

    def train_step(x, y):
        opt.zero_grad()
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        return loss, logits

    return tg.compile(train_step)
