"""TensorBatches: each example once per epoch, a new permutation per epoch, rank shards, batch-size changes,
and the batched crop/flip augmentation."""

from __future__ import annotations

import pytest
import torch

from lightning_sqn.problems import RandomCropFlip, TensorBatches


def _data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x holds the example index (as a float feature), y the index: batches show which examples they hold."""
    return torch.arange(n, dtype=torch.float32)[:, None], torch.arange(n)


def _epoch(batches: TensorBatches) -> list[torch.Tensor]:
    out = []
    for x, y in batches:
        assert torch.equal(x[:, 0].long(), y)  # inputs and targets indexed alike
        out.append(y)
    return out


def test_each_example_once_per_epoch_and_new_permutation() -> None:
    n = 23
    batches = TensorBatches(*_data(n), batch_size=5, shuffle=True, drop_last=False, seed=3)
    assert len(batches) == 5
    epochs = [_epoch(batches) for _ in range(3)]
    for epoch in epochs:
        assert [len(b) for b in epoch] == [5, 5, 5, 5, 3]
        assert torch.equal(torch.cat(epoch).sort().values, torch.arange(n))
    orders = [torch.cat(e) for e in epochs]
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])
    assert batches.epoch == 3


def test_drop_last_full_batches_without_repeats() -> None:
    batches = TensorBatches(*_data(23), batch_size=5, shuffle=True, drop_last=True)
    assert len(batches) == 4
    epoch = _epoch(batches)
    assert [len(b) for b in epoch] == [5] * 4
    assert torch.cat(epoch).unique().numel() == 20


def test_no_shuffle_keeps_order() -> None:
    batches = TensorBatches(*_data(10), batch_size=4)
    assert [b.tolist() for b in _epoch(batches)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [b.tolist() for b in _epoch(batches)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_permutation_depends_on_seed_and_epoch_only() -> None:
    a = TensorBatches(*_data(50), batch_size=10, shuffle=True, seed=1)
    b = TensorBatches(*_data(50), batch_size=10, shuffle=True, seed=1)
    c = TensorBatches(*_data(50), batch_size=10, shuffle=True, seed=2)
    first = torch.cat(_epoch(a))
    assert torch.equal(first, torch.cat(_epoch(b)))
    assert not torch.equal(first, torch.cat(_epoch(c)))
    b.set_epoch(0)  # as Lightning does through dataloader.sampler.set_epoch
    assert b.sampler is b and b.batch_sampler is None
    assert torch.equal(torch.cat(_epoch(b)), first)
    b.set_epoch(7)
    assert torch.equal(torch.cat(_epoch(b)), torch.cat(b.indices(7)))


def test_unconsumed_iterator_does_not_advance_the_epoch() -> None:
    batches = TensorBatches(*_data(12), batch_size=4, shuffle=True)
    iter(batches)  # Lightning creates such iterators (iterability check, first epoch before set_epoch)
    assert batches.epoch == 0
    it = iter(batches)
    batches.set_epoch(4)
    next(it)
    assert batches.epoch == 5


@pytest.mark.parametrize(("n", "drop_last"), [(24, True), (26, True), (24, False)])
def test_rank_shards_are_disjoint_equal_and_cover_the_epoch(n: int, drop_last: bool) -> None:
    B, W = 6, 2
    single = TensorBatches(*_data(n), batch_size=B, shuffle=True, drop_last=drop_last, seed=5)
    ranks = [
        TensorBatches(
            *_data(n), batch_size=B, shuffle=True, drop_last=drop_last, seed=5, rank=r, world_size=W
        )
        for r in range(W)
    ]
    for epoch in range(2):
        shards = [_epoch(r) for r in ranks]
        global_batches = _epoch(single)
        assert len(shards[0]) == len(shards[1]) == len(global_batches) == len(ranks[0])
        for k, global_batch in enumerate(global_batches):
            assert len(shards[0][k]) == len(shards[1][k]) == len(global_batch) // W
            # step k of the two ranks is step k of the single-process run
            assert torch.equal(torch.cat([shards[0][k], shards[1][k]]), global_batch)
        rank0, rank1 = torch.cat(shards[0]), torch.cat(shards[1])
        assert set(rank0.tolist()).isdisjoint(rank1.tolist())
        assert torch.equal(torch.cat([rank0, rank1]).sort().values, torch.cat(global_batches).sort().values)
        if not drop_last:
            assert torch.equal(torch.cat([rank0, rank1]).sort().values, torch.arange(n))
        assert ranks[0].local_batch_size == B // W


def test_uneven_example_count_pads_like_distributed_sampler() -> None:
    n, W = 7, 3
    ranks = [TensorBatches(*_data(n), batch_size=3, drop_last=False, rank=r, world_size=W) for r in range(W)]
    shards = [_epoch(r) for r in ranks]
    assert [[len(b) for b in s] for s in shards] == [[1, 1, 1]] * 3
    seen = torch.cat([torch.cat(s) for s in shards])
    assert set(seen.tolist()) == set(range(n)) and seen.numel() == 9  # 2 padded with the first entries


def test_batch_size_change_takes_effect_next_epoch() -> None:
    batches = TensorBatches(*_data(24), batch_size=4, shuffle=True, drop_last=True)
    assert {len(b) for b in _epoch(batches)} == {4}
    batches.batch_size = 8
    assert len(batches) == 3
    assert [len(b) for b in _epoch(batches)] == [8, 8, 8]
    size = {"value": 6}
    follow = TensorBatches(*_data(24), batch_size=lambda: size["value"], drop_last=True)
    assert len(_epoch(follow)) == 4
    size["value"] = 12
    assert [len(b) for b in _epoch(follow)] == [12, 12]


def test_divisibility_and_argument_errors() -> None:
    with pytest.raises(ValueError, match="not divisible by the world size 2"):
        TensorBatches(*_data(10), batch_size=5, world_size=2)
    batches = TensorBatches(*_data(10), batch_size=4, world_size=2)
    with pytest.raises(ValueError, match="not divisible"):
        batches.batch_size = 3
    size = {"value": 4}
    follow = TensorBatches(*_data(10), batch_size=lambda: size["value"], world_size=2)
    size["value"] = 5
    with pytest.raises(ValueError, match="not divisible"):
        list(follow)
    with pytest.raises(ValueError, match="rank"):
        TensorBatches(*_data(10), batch_size=4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="same number"):
        TensorBatches(torch.zeros(3, 1), torch.zeros(4), batch_size=1)
    with pytest.raises(ValueError, match="no batch"):
        list(TensorBatches(*_data(3), batch_size=4, drop_last=True))


# ---------------------------------------------------------------------------- augmentation


def _reference_crops(x: torch.Tensor, padding: int, fill: list[float]) -> list[list[torch.Tensor]]:
    """All (2p+1)^2 crops and their flips of each padded image, by loops."""
    N, C, H, W = x.shape
    out = []
    for n in range(N):
        padded = torch.tensor(fill)[:, None, None].expand(C, H + 2 * padding, W + 2 * padding).clone()
        padded[:, padding : padding + H, padding : padding + W] = x[n]
        crops = []
        for dy in range(2 * padding + 1):
            for dx in range(2 * padding + 1):
                crop = padded[:, dy : dy + H, dx : dx + W]
                crops += [crop, crop.flip(-1)]
        out.append(crops)
    return out


def test_random_crop_flip_gives_padded_crops() -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 3, 5, 6)
    fill = [-1.0, -2.0, -3.0]
    out = RandomCropFlip(padding=2, fill=fill)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    reference = _reference_crops(x, 2, fill)
    for n in range(len(x)):
        assert any(torch.equal(out[n], crop) for crop in reference[n])
    assert any(not torch.equal(out[n], x[n]) for n in range(len(x)))  # not all identity
    again = RandomCropFlip(padding=2, fill=fill)(x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)  # the generator decides


def test_flip_only() -> None:
    x = torch.randn(32, 1, 4, 4)
    out = RandomCropFlip(padding=0)(x, torch.Generator().manual_seed(1))
    flipped = [torch.equal(out[n], x[n].flip(-1)) for n in range(32)]
    assert all(f or torch.equal(out[n], x[n]) for n, f in enumerate(flipped))
    assert 0 < sum(flipped) < 32


def test_transform_applies_to_batches_with_per_epoch_seed() -> None:
    x, y = torch.randn(8, 1, 4, 4), torch.arange(8)
    batches = TensorBatches(x, y, batch_size=8, transform=RandomCropFlip(padding=1))
    first = next(iter(batches))[0]
    second = next(iter(batches))[0]
    assert not torch.equal(first, x) and not torch.equal(first, second)
    batches.set_epoch(0)
    assert torch.equal(next(iter(batches))[0], first)
