"""DataLoader's arguments as PyTorch's (names, order, defaults, the checks PyTorch makes), the
samplers (``SequentialSampler``, ``RandomSampler``, ``BatchSampler``), ``batch_sampler``,
``batch_size=None`` and ``collate_fn``, each compared with ``torch.utils.data``."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import tracegrad as tg
from tracegrad.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SequentialSampler,
    TensorDataset,
)

X = np.arange(20, dtype=np.float32).reshape(10, 2)
Y = np.arange(10)


def _data(lib):
    return (TensorDataset if lib is tg else lib.utils.data.TensorDataset)(
        lib.tensor(X), lib.tensor(Y)
    )


def _targets(loader) -> list:
    return [batch[1].tolist() for batch in loader]


def test_signature_is_torchs():
    torch = pytest.importorskip("torch")
    ours = inspect.signature(DataLoader).parameters
    theirs = inspect.signature(torch.utils.data.DataLoader).parameters
    assert [(p.name, p.kind, p.default) for p in ours.values()] == [
        (p.name, p.kind, p.default) for p in theirs.values()
    ]


@pytest.mark.parametrize("name", ["SequentialSampler", "RandomSampler", "BatchSampler"])
def test_sampler_signatures_are_torchs(name):
    torch = pytest.importorskip("torch")
    ours = inspect.signature(getattr(tg.data, name)).parameters
    theirs = inspect.signature(getattr(torch.utils.data, name)).parameters
    assert [(p.name, p.default) for p in ours.values()] == [
        (p.name, p.default) for p in theirs.values()
    ]


# loader arguments, positional where PyTorch's order allows -> the same batches in both
ORDERED_CASES = {
    "batch_size_positional": lambda lib, data: (data, 4),
    "drop_last_positional": lambda lib, data: (data, 3, False, None, None, 0, None, False, True),
    "sampler_positional": lambda lib, data: (data, 3, None, [9, 0, 8, 1, 7]),
    "batch_sampler": lambda lib, data: (data, 1, None, None, [[3, 1], [0], [9, 8, 7]]),
    "batch_sampler_class": lambda lib, data: (
        data,
        1,
        False,
        None,
        _module(lib).BatchSampler(_module(lib).SequentialSampler(range(10)), 4, True),
    ),
    "workers_in_process": lambda lib, data: (data, 4, False, None, None, 2, None, False),
}


def _module(lib):
    return tg.data if lib is tg else lib.utils.data


@pytest.mark.parametrize("case", sorted(ORDERED_CASES))
def test_batches_match_torch(case):
    torch = pytest.importorskip("torch")
    ours = DataLoader(*ORDERED_CASES[case](tg, _data(tg)))
    theirs = torch.utils.data.DataLoader(*ORDERED_CASES[case](torch, _data(torch)))
    assert len(ours) == len(theirs)
    assert _targets(ours) == _targets(theirs)


def test_unbatched_samples_and_a_custom_collate_fn_match_torch():
    torch = pytest.importorskip("torch")
    ours = list(DataLoader(_data(tg), batch_size=None))
    theirs = list(torch.utils.data.DataLoader(_data(torch), batch_size=None))
    assert len(ours) == len(theirs) == 10
    assert [y.tolist() for _, y in ours] == [y.tolist() for _, y in theirs]
    assert tuple(ours[3][0].shape) == (2,)

    def total(samples):
        return sum(int(y) for _, y in samples)

    assert list(DataLoader(_data(tg), 4, collate_fn=total)) == list(
        torch.utils.data.DataLoader(_data(torch), 4, collate_fn=total)
    )


def test_shuffle_by_position_and_random_sampler_follow_the_seed():
    orders = []
    for seed in (3, 3, 4):
        tg.manual_seed(seed)
        loader = DataLoader(_data(tg), 4, True)  # shuffle is the third argument
        orders.append([i for batch in _targets(loader) for i in batch])
    assert orders[0] == orders[1] != orders[2] and sorted(orders[0]) == list(range(10))
    tg.manual_seed(5)
    again = list(RandomSampler(range(10), num_samples=25))
    assert len(again) == 25 and all(again.count(i) in (2, 3) for i in range(10))
    drawn = list(RandomSampler(range(3), replacement=True, num_samples=50))
    assert set(drawn) == {0, 1, 2}


def test_samplers_compose_as_in_torch():
    torch = pytest.importorskip("torch")
    for drop_last in (False, True):
        ours = BatchSampler(SequentialSampler(range(7)), 3, drop_last)
        theirs = torch.utils.data.BatchSampler(
            torch.utils.data.SequentialSampler(range(7)), 3, drop_last
        )
        assert list(ours) == list(theirs) and len(ours) == len(theirs)


class _Squares(Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        return tg.tensor([float(i)]), tg.tensor(float(i * i))


def test_compiled_step_trains_over_batches_of_a_batch_sampler():
    """The loader feeds a compiled step as it feeds an eager one (same batches, same model)."""
    tg.manual_seed(0)
    models = [tg.nn.Linear(1, 1) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    opts = [tg.optim.SGD(m.parameters(), lr=0.01) for m in models]

    def train_step(model, opt, x, y):
        opt.zero_grad()
        loss = (model(x).squeeze(1) - y).square().mean()
        loss.backward()
        opt.step()
        return loss

    compiled = tg.compile(train_step)
    batches = BatchSampler(SequentialSampler(range(6)), 2, drop_last=False)
    for (x, y), (x2, y2) in zip(
        DataLoader(_Squares(), batch_sampler=batches),
        DataLoader(_Squares(), batch_sampler=batches),
        strict=True,
    ):
        want, got = train_step(models[0], opts[0], x, y), compiled(models[1], opts[1], x2, y2)
        np.testing.assert_allclose(got.item(), want.item(), rtol=1e-6)
    np.testing.assert_allclose(
        models[1].weight.detach().numpy(), models[0].weight.detach().numpy(), rtol=1e-6
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sampler": [0, 1], "shuffle": True}, "mutually exclusive with shuffle"),
        ({"batch_sampler": [[0]], "batch_size": 2}, "batch_sampler option is mutually exclusive"),
        ({"batch_sampler": [[0]], "drop_last": True}, "batch_sampler option is mutually exclusive"),
        ({"batch_size": None, "drop_last": True}, "disables auto-batching"),
        ({"batch_size": 0}, "positive integer"),
        ({"num_workers": -1}, "non-negative"),
        ({"timeout": -1}, "non-negative"),
        ({"prefetch_factor": 2}, "prefetch_factor"),
        ({"persistent_workers": True}, "needs num_workers > 0"),
    ],
)
def test_arguments_torch_refuses_raise_value_errors(kwargs, message):
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError):
        torch.utils.data.DataLoader(_data(torch), **kwargs)
    with pytest.raises(ValueError, match=message):
        DataLoader(_data(tg), **kwargs)


def test_a_generator_is_refused_with_what_to_do_instead():
    with pytest.raises(TypeError, match=r"tg\.manual_seed"):
        DataLoader(_data(tg), generator=object())
    with pytest.raises(TypeError, match=r"tg\.manual_seed"):
        RandomSampler(range(3), generator=object())
