"""Class losses given a target outside [0, C): an IndexError naming the target, the number of
classes and the user's line, eagerly and from compiled code (never a line of contextlib)."""

from __future__ import annotations

import os

import pytest

import tracegrad as tg
import tracegrad.nn.functional as F
from tracegrad import nn

THIS_FILE = os.path.basename(__file__)


def _losses(logits, target):
    """Each class loss by name, on (N, 3) logits."""
    return {
        "cross_entropy": lambda: F.cross_entropy(logits, target),
        "nll_loss": lambda: F.nll_loss(logits.log_softmax(1), target),
        "CrossEntropyLoss": lambda: nn.CrossEntropyLoss()(logits, target),
        "NLLLoss": lambda: nn.NLLLoss()(logits.log_softmax(1), target),
        "label_smoothing": lambda: F.cross_entropy(logits, target, label_smoothing=0.1),
        "sequence": lambda: F.cross_entropy(logits.unsqueeze(2), target.unsqueeze(1)),
        "weighted": lambda: F.cross_entropy(logits, target, weight=tg.tensor([1.0, 2.0, 0.5])),
        "weighted nll": lambda: F.nll_loss(logits.log_softmax(1), target, weight=tg.ones(3)),
    }


@pytest.mark.parametrize("name", sorted(_losses(None, None)))
@pytest.mark.parametrize("bad", [3, 7, -1])
def test_eager_error_names_target_classes_and_user_line(name, bad):
    logits = tg.randn(2, 3, requires_grad=True)
    with pytest.raises(IndexError) as info:
        _losses(logits, tg.tensor([0, bad]))[name]()
    message = str(info.value)
    assert f"Target {bad} is out of bounds" in message and "3 classes" in message
    assert f"at {__file__}:" in message and "contextlib" not in message


class _Classifier(nn.Module):
    def __init__(self, weight=None):
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.weight = weight  # per class (a weighted loss composes other ops), or None

    def forward(self, x, target):
        return F.cross_entropy(self.linear(x), target, weight=self.weight)


def _step(model, opt, x, target):
    opt.zero_grad()
    loss = model(x, target)
    loss.backward()
    opt.step()
    return loss


@pytest.mark.parametrize("weight", [None, [1.0, 2.0, 0.5]], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("bad", [5, -1])
@pytest.mark.parametrize("form", ["compiled module", "compiled step"])
def test_compiled_error_names_target_classes_and_user_line(form, bad, weight):
    model = _Classifier(None if weight is None else tg.tensor(weight))
    opt = tg.optim.SGD(model.parameters(), lr=0.1)
    step = tg.compile(_step)
    run = {
        "compiled module": tg.compile(model),
        "compiled step": lambda *args: step(model, opt, *args),
    }[form]
    x = tg.randn(2, 4)
    run(x, tg.tensor([0, 2]))  # compiled with good targets first
    with pytest.raises(IndexError) as info:
        run(x, tg.tensor([bad, 0]))
    message = str(info.value)
    assert f"Target {bad} is out of bounds" in message and "3 classes" in message
    assert THIS_FILE in message and "contextlib" not in message


def test_torch_raises_index_error_too():
    torch = pytest.importorskip("torch")
    with pytest.raises(IndexError):
        torch.nn.functional.cross_entropy(torch.randn(2, 3), torch.tensor([0, 3]))
