"""TensorDataset and DataLoader, and the seed example: a Linear model trained with MSELoss and
SGD over a DataLoader."""

import itertools

import numpy as np
import pytest

import tracegrad as tg
from tracegrad import nn, optim
from tracegrad.data import DataLoader, Dataset, TensorDataset


def make_dataset(n=10):
    x = tg.tensor(np.arange(n * 2, dtype=np.float32).reshape(n, 2))
    y = tg.tensor(np.arange(n, dtype=np.int64))
    return TensorDataset(x, y)


# --- TensorDataset -------------------------------------------------------------------------------


def test_tensor_dataset_indexing_and_len():
    ds = make_dataset(7)
    assert len(ds) == 7
    x, y = ds[3]
    np.testing.assert_array_equal(x.numpy(), [6.0, 7.0])
    assert y.item() == 3 and y.dtype == tg.int64
    x, y = ds[-1]
    assert y.item() == 6
    xs, ys = ds[2:4]
    assert tuple(xs.shape) == (2, 2) and ys.tolist() == [2, 3]


def test_tensor_dataset_accepts_numpy_arrays_and_single_tensors():
    ds = TensorDataset(np.zeros((4, 3)))
    assert len(ds) == 4 and len(ds[0]) == 1
    assert ds[0][0].dtype == tg.float64


def test_tensor_dataset_mismatched_sizes_error_names_the_shapes():
    with pytest.raises(ValueError) as info:
        TensorDataset(tg.zeros(5, 2), tg.zeros(4))
    assert "(5, 2)" in str(info.value) and "(4,)" in str(info.value)


# --- DataLoader ----------------------------------------------------------------------------------


def test_batches_in_order_with_a_short_last_batch():
    loader = DataLoader(make_dataset(10), batch_size=4)
    assert len(loader) == 3
    batches = list(loader)
    assert [tuple(x.shape) for x, _ in batches] == [(4, 2), (4, 2), (2, 2)]
    assert [y.tolist() for _, y in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    np.testing.assert_array_equal(batches[2][0].numpy(), [[16, 17], [18, 19]])


def test_drop_last():
    loader = DataLoader(make_dataset(10), batch_size=4, drop_last=True)
    assert len(loader) == 2
    assert [y.tolist() for _, y in loader] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    exact = DataLoader(make_dataset(8), batch_size=4, drop_last=True)
    assert len(exact) == 2 and len(list(exact)) == 2


def test_default_batch_size_is_one_and_bad_batch_size_raises():
    loader = DataLoader(make_dataset(3))
    assert len(loader) == 3
    assert [tuple(x.shape) for x, _ in loader] == [(1, 2)] * 3
    with pytest.raises(ValueError):
        DataLoader(make_dataset(3), batch_size=0)


def test_shuffle_covers_each_sample_once_per_epoch_and_reorders_between_epochs():
    tg.manual_seed(0)
    loader = DataLoader(make_dataset(50), batch_size=8, shuffle=True)
    epochs = []
    for _ in range(3):
        order = [i for _, y in loader for i in y.tolist()]
        assert sorted(order) == list(range(50))
        epochs.append(order)
    assert epochs[0] != list(range(50))
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2]


def test_shuffle_keeps_inputs_and_targets_aligned():
    tg.manual_seed(1)
    for x, y in DataLoader(make_dataset(20), batch_size=6, shuffle=True):
        np.testing.assert_array_equal(x.numpy(), np.stack([2 * y.numpy(), 2 * y.numpy() + 1], 1))


def test_shuffle_is_reproducible_under_manual_seed():
    def epoch_orders():
        loader = DataLoader(make_dataset(30), batch_size=7, shuffle=True)
        return [[i for _, y in loader for i in y.tolist()] for _ in range(2)]

    tg.manual_seed(42)
    first = epoch_orders()
    tg.manual_seed(42)
    assert epoch_orders() == first
    tg.manual_seed(43)
    assert epoch_orders() != first


def test_shuffle_with_drop_last_drops_a_different_remainder():
    tg.manual_seed(2)
    loader = DataLoader(make_dataset(10), batch_size=3, shuffle=True, drop_last=True)
    seen = [sorted(i for _, y in loader for i in y.tolist()) for _ in range(5)]
    assert all(len(s) == 9 and len(set(s)) == 9 for s in seen)
    assert len({tuple(s) for s in seen}) > 1


def test_custom_dataset_is_collated():
    class Squares(Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return tg.tensor([float(i)]), i * i

    batches = list(DataLoader(Squares(), batch_size=2))
    assert len(batches) == 3
    x, y = batches[1]
    np.testing.assert_array_equal(x.numpy(), [[2.0], [3.0]])
    assert y.tolist() == [4, 9] and y.dtype == tg.int64
    assert tuple(batches[2][0].shape) == (1, 1)


def test_collate_dicts_and_python_floats_like_pytorch():
    class Records(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"x": np.full(2, i, np.float32), "weight": i / 2, "label": i}

    batch = next(iter(DataLoader(Records(), batch_size=3)))
    assert set(batch) == {"x", "weight", "label"}
    assert tuple(batch["x"].shape) == (3, 2) and batch["x"].dtype == tg.float32
    assert batch["weight"].tolist() == [0.0, 0.5, 1.0] and batch["weight"].dtype == tg.float64
    assert batch["label"].dtype == tg.int64


# --- the seed example ----------------------------------------------------------------------------


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 1)

    def forward(self, x):
        return self.linear(x)


def test_seed_example_linear_regression_converges():
    tg.manual_seed(0)
    rng = np.random.default_rng(0)
    true_w = np.array([[2.0, -3.0, 0.5]], np.float32)
    x = rng.standard_normal((256, 3)).astype(np.float32)
    y = x @ true_w.T + 1.0 + 0.01 * rng.standard_normal((256, 1)).astype(np.float32)
    loader = DataLoader(TensorDataset(tg.tensor(x), tg.tensor(y)), batch_size=32, shuffle=True)

    model = Regressor()
    loss_fn = nn.MSELoss()
    opt = optim.SGD(model.parameters(), lr=0.1)
    epoch_losses = []
    for _ in range(10):
        total = 0.0
        for xb, yb in loader:
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            total += loss.item() * len(xb)
        epoch_losses.append(total / len(x))

    # The noise variance is 1e-4; with seeds 0-4 the last epoch ends at 0.8e-4 to 1.1e-4 and the
    # first above 4, so 1e-3 leaves a 10x margin.
    assert epoch_losses[0] > 1.0
    assert epoch_losses[-1] < 1e-3
    assert all(b <= a * 1.05 for a, b in itertools.pairwise(epoch_losses))
    np.testing.assert_allclose(model.linear.weight.detach().numpy(), true_w, atol=0.01)
    np.testing.assert_allclose(model.linear.bias.detach().numpy(), [1.0], atol=0.01)
