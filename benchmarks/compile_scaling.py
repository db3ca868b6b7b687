"""Compile time against graph size, on chains of ops the passes cannot fold away.

    python -m benchmarks.compile_scaling                    # chains up to 50,000 nodes
    python -m benchmarks.compile_scaling --max-nodes 10000

The model is a chain of links ``x = tanh(x * w_i) + x``, one parameter per link, so every node
is live, distinct and not constant: fold, the rewrites, CSE and DCE keep them all, and the graph
grows with the number of links. Two compilations are timed per size: the compiled module
(forward, reverse mode and backward, on its first call) and a whole training step (forward,
backward and an SGD update traced into one function). ``nodes`` is the size of the graph the
passes start from: the joint forward + backward graph of the module, the traced step.
Compile time growing about as fast as ``nodes`` means no pass is quadratic.
"""

from __future__ import annotations

import argparse
import time

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn, optim

WIDTH = 4
SIZES = (1_000, 2_000, 5_000, 10_000, 20_000, 50_000)
# Graph nodes per link, measured: forward mul, tanh, add; their gradients; the update.
NODES_PER_LINK = {"module": 8, "step": 12}


class Link(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(tg.randn(WIDTH))

    def forward(self, x):
        return (x * self.w).tanh() + x


def chain(n_links: int) -> nn.Module:
    return nn.Sequential(*[Link() for _ in range(n_links)])


def timed(call) -> tuple[float, float]:
    """Wall-clock and CPU seconds of ``call()`` (CPU time is steadier on a shared machine)."""
    wall, cpu = time.perf_counter(), time.process_time()
    call()
    return time.perf_counter() - wall, time.process_time() - cpu


def compile_module(n_links: int) -> tuple[float, float, int]:
    """Seconds to compile (first call) a chain module with a backward; its joint graph's size."""
    model = tg.compile(chain(n_links))
    x = tg.randn(2, WIDTH)
    return (*timed(lambda: model(x)), _nodes_passes_start_from(model.latest.report))


def compile_step(n_links: int) -> tuple[float, float, int]:
    """Seconds to compile (first call) a whole SGD step of a chain; its traced graph's size."""
    model = chain(n_links)
    opt = optim.SGD(model.parameters(), lr=0.01)

    def train_step(x, y):
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    step = tg.compile(train_step)
    x, y = tg.randn(2, WIDTH), tg.randn(2, WIDTH)
    return (*timed(lambda: step(x, y)), _nodes_passes_start_from(step.latest.report))


def _nodes_passes_start_from(report) -> int:
    """The largest graph a pipeline of the compilation started from (the joint graph of a
    module, the traced step)."""
    return max(results[0].nodes_before for _, results in report.stages if results)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-nodes", type=int, default=SIZES[-1])
    parser.add_argument("--kinds", default="module,step", help="comma-separated: module, step")
    args = parser.parse_args(argv)
    kinds = {"module": compile_module, "step": compile_step}
    print(f"{'kind':<8}{'links':>8}{'nodes':>9}{'wall s':>9}{'cpu s':>9}{'cpu us/node':>13}")
    for kind in args.kinds.split(","):
        for size in [s for s in SIZES if s <= args.max_nodes]:
            links = max(1, size // NODES_PER_LINK[kind])
            wall, cpu, nodes = kinds[kind](links)
            per_node = cpu / nodes * 1e6
            print(
                f"{kind:<8}{links:>8}{nodes:>9}{wall:>9.2f}{cpu:>9.2f}{per_node:>13.0f}", flush=True
            )


if __name__ == "__main__":
    main()
