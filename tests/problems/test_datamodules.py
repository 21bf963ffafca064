"""The file readers and DataModules on tiny fake files written here (no dependency on real data sets), and
a Lightning fit on scikit-learn's digits."""

from __future__ import annotations

import gzip
import logging
import pickle
import struct
from pathlib import Path

import lightning
import numpy as np
import pytest
import torch
from torch import Tensor, nn

from lightning_sqn.lightning.callbacks.batch_size import BatchSizeScheduler
from lightning_sqn.problems import (
    CIFAR10DataModule,
    DigitsDataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    RandomCropFlip,
    TensorBatches,
    TensorDataModule,
    digits_convnet,
    read_cifar_npz,
)
from lightning_sqn.problems.data.files import cache_dir

# ---------------------------------------------------------------------------- fake files


def _idx_bytes(array: np.ndarray) -> bytes:
    """IDX: 0, 0, type code, ndim, then big-endian uint32 sizes and big-endian data."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _write_mnist(root: Path, folder: str, n_train: int = 12, n_test: int = 7, gz: bool = True, seed: int = 0):
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for i, (name, array) in enumerate(arrays.items()):
        if gz and i != 1:  # one file uncompressed: both kinds are read
            (raw / f"{name}.gz").write_bytes(gzip.compress(_idx_bytes(array)))
        else:
            (raw / name).write_bytes(_idx_bytes(array))
    return arrays


def _listing(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(root)), p.stat().st_size) for p in root.rglob("*"))


# ---------------------------------------------------------------------------- readers


def test_read_cifar_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    nhwc = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "s.npz", images=nhwc, labels=np.array([0, 9, 8, 7, 6]))
    images, back_labels = read_cifar_npz(tmp_path / "s.npz")
    assert images.shape == (5, 3, 32, 32) and images.flags.c_contiguous
    assert np.array_equal(images, nhwc.transpose(0, 3, 1, 2))
    assert back_labels.tolist() == [0, 9, 8, 7, 6]


# ---------------------------------------------------------------------------- MNIST / Fashion-MNIST


@pytest.mark.parametrize("cls", [MNISTDataModule, FashionMNISTDataModule])
def test_mnist_reads_exact_pixels_without_writing(tmp_path: Path, cls) -> None:
    arrays = _write_mnist(tmp_path, cls.folder)
    before = _listing(tmp_path)
    dm = cls(tmp_path, batch_size=4, normalize=False)
    dm.setup()
    x, y = dm.split("train")
    assert x.shape == (12, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x, torch.from_numpy(arrays["train-images-idx3-ubyte"]).float()[:, None] / 255)
    assert y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    xt, yt = dm.split("test")
    assert xt.shape == (7, 1, 28, 28) and yt.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    assert torch.equal(
        (xt * 255).round().to(torch.uint8)[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"])
    )
    assert _listing(tmp_path) == before  # nothing extracted or written into data_dir

    normalized = cls(tmp_path, batch_size=4, dtype=torch.float64)
    normalized.setup()
    xn, _ = normalized.split("train")
    assert xn.dtype == torch.float64
    expected = (
        torch.from_numpy(arrays["train-images-idx3-ubyte"]).double()[:, None] / 255 - cls.mean[0]
    ) / cls.std[0]
    torch.testing.assert_close(xn, expected)


def test_mnist_from_a_read_only_folder_of_gz_files(tmp_path: Path, monkeypatch) -> None:
    """torchvision reads uncompressed IDX files: gzipped ones are extracted once into the cache folder
    (``$LIGHTNING_SQN_CACHE``), also when the data folder is read-only, and read from there."""
    data, cache = tmp_path / "data", tmp_path / "cache"
    monkeypatch.setenv("LIGHTNING_SQN_CACHE", str(cache))
    arrays = _write_mnist(data, "MNIST", gz=True)
    raw = data / "MNIST" / "raw"
    for p in [*raw.iterdir(), raw]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        dm = MNISTDataModule(data, batch_size=4, normalize=False)
        dm.setup()
        x, y = dm.split("train")
        assert torch.equal(
            (x * 255).round().to(torch.uint8)[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"])
        )
        assert y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
        assert cache_dir() == cache
        extracted = sorted(p.name for p in cache.rglob("*-ubyte"))
        assert extracted == sorted(arrays)  # the uncompressed one is copied beside the extracted ones
        stamp = {p: p.stat().st_mtime_ns for p in cache.rglob("*-ubyte")}
        again = MNISTDataModule(data, batch_size=4, normalize=False)
        again.setup()  # extracted once: the cache is reused, not rewritten
        assert torch.equal(again.split("test")[1], dm.split("test")[1])
        assert {p: p.stat().st_mtime_ns for p in cache.rglob("*-ubyte")} == stamp
    finally:
        for p in [raw, *raw.iterdir()]:
            p.chmod(0o755 if p.is_dir() else 0o644)


def test_mnist_missing_files_error(tmp_path: Path) -> None:
    dm = FashionMNISTDataModule(tmp_path, batch_size=4)
    with pytest.raises(FileNotFoundError) as info:
        dm.setup()
    message = str(info.value)
    assert str(tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte") in message
    assert "download=True" in message
    dm.prepare_data()  # download=False: does nothing
    assert not any(tmp_path.iterdir())


def test_mnist_loaders_and_subsets(tmp_path: Path) -> None:
    _write_mnist(tmp_path, "MNIST", n_train=20, n_test=9)
    dm = MNISTDataModule(tmp_path, batch_size=4, train_subset=10, test_subset=5, val_size=2)
    dm.setup()
    assert dm.split("train")[0].shape[0] == 8 and dm.split("val")[0].shape[0] == 2
    assert dm.split("test")[0].shape[0] == 5
    train = dm.train_dataloader()
    assert isinstance(train, TensorBatches) and train.shuffle and train.drop_last and len(train) == 2
    assert [len(y) for _, y in dm.val_dataloader()] == [2]  # the validation split
    assert [len(y) for _, y in dm.test_dataloader()] == [4, 1]  # every test example, in order


# ---------------------------------------------------------------------------- CIFAR-10


def _write_cifar_batches(root: Path, per_batch: int = 3, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """The python version's pickles (dicts of ``data`` N x 3072 uint8, rows 1024 R, 1024 G, 1024 B, and
    ``labels``) with random content: their MD5 sums are not CIFAR-10's."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rows, labels = [], []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        batch_labels = rng.integers(0, 10, per_batch).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "labels": batch_labels}, f)  # real files: str keys under latin1
        rows.append(data)
        labels += batch_labels
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return np.concatenate(rows), labels


def _write_cifar_subset(root: Path, n_train: int = 6, n_test: int = 4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(2)
    (root / "cifar10").mkdir(parents=True)
    out = {}
    for name, n in (("train_first4000", n_train), ("test_first1000", n_test)):
        out[name] = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        np.savez(root / "cifar10" / f"{name}.npz", images=out[name], labels=rng.integers(0, 10, n))
    return out


def test_cifar_full_layout_through_torchvision(tmp_path: Path, monkeypatch) -> None:
    import torchvision

    rows, labels = _write_cifar_batches(tmp_path)
    # torchvision checks every file's MD5 sum: fake files are refused as corrupted ...
    with pytest.raises(RuntimeError, match="corrupted"):
        CIFAR10DataModule(tmp_path, batch_size=3).setup()
    # ... so here the check passes them, and torchvision's reader does the rest
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: True)
    _write_cifar_subset(tmp_path)  # present too: the full layout wins
    dm = CIFAR10DataModule(tmp_path, batch_size=3, normalize=False)
    dm.setup()
    x, y = dm.split("train")
    assert x.shape == (15, 3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x, torch.from_numpy(rows[:15]).float().reshape(15, 3, 32, 32) / 255)
    assert y.tolist() == labels[:15]
    xt, yt = dm.split("test")
    assert xt.shape == (3, 3, 32, 32) and yt.tolist() == labels[15:]


def test_cifar_subset_normalized_with_log(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    arrays = _write_cifar_subset(tmp_path)
    dm = CIFAR10DataModule(tmp_path, batch_size=2)
    with caplog.at_level(logging.WARNING, logger="lightning_sqn.problems.data.images"):
        dm.setup()
    assert "SUBSET" in caplog.text
    x, y = dm.split("train")
    raw = torch.from_numpy(arrays["train_first4000"]).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(CIFAR10DataModule.mean)[:, None, None]
    std = torch.tensor(CIFAR10DataModule.std)[:, None, None]
    torch.testing.assert_close(x, (raw - mean) / std)
    assert y.dtype == torch.int64 and dm.split("test")[0].shape == (4, 3, 32, 32)


def test_cifar_missing_and_augment(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py.*download=True"):
        CIFAR10DataModule(tmp_path, batch_size=2).setup()
    _write_cifar_subset(tmp_path)
    dm = CIFAR10DataModule(tmp_path, batch_size=2, augment=True)
    assert isinstance(dm.train_transform, RandomCropFlip) and dm.train_transform.padding == 4
    # padding stands for black pixels of the raw image: (0 - mean) / std after normalization
    torch.testing.assert_close(
        torch.tensor(dm.train_transform.fill), -torch.tensor(dm.mean) / torch.tensor(dm.std)
    )
    dm.setup()
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 32, 32)
    xt, _ = next(iter(dm.test_dataloader()))
    assert torch.equal(xt, dm.split("test")[0][:2])  # evaluation is not augmented
    with pytest.raises(ValueError, match="not both"):
        CIFAR10DataModule(tmp_path, batch_size=2, augment=True, train_transform=RandomCropFlip())


# ---------------------------------------------------------------------------- TensorDataModule


def test_tensor_datamodule_splits_and_batch_sizes() -> None:
    x, y = torch.arange(40.0)[:, None], torch.arange(40)
    dm = TensorDataModule((x, y), (x[:10], y[:10]), batch_size=8, eval_batch_size=4, val_size=8, seed=1)
    dm.setup()
    xtr, ytr = dm.split("train")
    _, yval = dm.split("val")
    assert len(ytr) == 32 and len(yval) == 8
    assert sorted(ytr.tolist() + yval.tolist()) == list(range(40))
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.int64
    assert [len(b) for _, b in dm.val_dataloader()] == [4, 4]
    loader = dm.train_dataloader()
    assert len(loader) == 4
    dm.batch_size = 16  # e.g. a batch-size scheduler between epochs: the same loader follows
    assert len(loader) == 2 and [len(b) for _, b in loader] == [16, 16]

    dm.world_size = 2  # as setup() sets it under DDP
    assert dm.local_batch_size == 8
    dm.local_batch_size = 4
    assert dm.batch_size == 8
    dm.batch_size = 9
    with pytest.raises(ValueError, match="not divisible by the world size 2"):
        list(dm.train_dataloader())


def test_tensor_datamodule_val_defaults_to_test() -> None:
    x, y = torch.randn(12, 2, dtype=torch.float64), torch.randn(12, dtype=torch.float64)
    dm = TensorDataModule((x, y), (x[:5], y[:5]), batch_size=4)
    val = dm.val_dataloader()  # sets up lazily
    assert isinstance(val, TensorBatches) and torch.equal(val.y, dm.split("test")[1])
    assert dm.split("train")[1].dtype == torch.float32  # floating targets follow dtype
    assert TensorDataModule((x, y), batch_size=4).val_dataloader() == []
    with pytest.raises(ValueError, match="exceeds"):
        TensorDataModule((x, y), batch_size=4, train_subset=13).setup()


# ---------------------------------------------------------------------------- digits and Lightning


def test_digits_split() -> None:
    from sklearn.datasets import load_digits

    dm = DigitsDataModule(batch_size=32)
    dm.setup()
    x, y = dm.split("train")
    xt, yt = dm.split("test")
    assert x.shape == (1437, 1, 8, 8) and xt.shape == (360, 1, 8, 8)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() == 0 and x.max() == 1
    images = torch.from_numpy(load_digits().images / 16).float().reshape(1797, 64)
    both = torch.cat([x, xt]).reshape(1797, 64)
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert key(both) == key(images)  # a partition of the 1797 images
    again = DigitsDataModule(batch_size=32)
    again.setup()
    assert torch.equal(again.split("test")[1], yt)  # fixed split


class _Classifier(lightning.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = digits_convnet()
        self.seen: dict[int, list[Tensor]] = {}

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        self.seen.setdefault(self.current_epoch, []).append(y.clone())
        return nn.functional.cross_entropy(self.net(x), y)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("val_loss", nn.functional.cross_entropy(self.net(batch[0]), batch[1]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _trainer(**kwargs) -> lightning.Trainer:
    return lightning.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def test_lightning_fit_with_digits_follows_epochs() -> None:
    model, dm = _Classifier(), DigitsDataModule(batch_size=128)
    trainer = _trainer(max_epochs=2)
    trainer.fit(model, datamodule=dm)
    assert dm.split("train")[0].device == trainer.strategy.root_device
    assert "val_loss" in trainer.callback_metrics  # validation ran on the test set
    reference = dm.train_dataloader()
    labels = dm.split("train")[1]
    for epoch in (0, 1):
        assert len(model.seen[epoch]) == 1437 // 128
        expected = [labels[i] for i in reference.indices(epoch)]  # Lightning's epoch e is permutation e
        assert all(torch.equal(a, b) for a, b in zip(model.seen[epoch], expected, strict=True))


def test_batch_size_scheduler_writes_local_batch_size() -> None:
    model, dm = _Classifier(), DigitsDataModule(batch_size=64)
    scheduler = BatchSizeScheduler({1: 256}, max_batch_size=256, attr_name="local_batch_size")
    trainer = _trainer(
        max_epochs=2, reload_dataloaders_every_n_epochs=1, limit_val_batches=0, callbacks=[scheduler]
    )
    trainer.fit(model, datamodule=dm)
    assert [{len(y) for y in model.seen[e]} for e in (0, 1)] == [{64}, {256}]
    assert dm.batch_size == 256
