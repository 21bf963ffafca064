"""Reading the data sets' files: through torchvision's dataset classes wherever torchvision can read them.

* MNIST and Fashion-MNIST: ``torchvision.datasets.MNIST`` / ``FashionMNIST`` over
  ``<data_dir>/<MNIST|FashionMNIST>/raw``. torchvision reads the uncompressed IDX files; where a folder
  holds only the ``.gz`` files (a read-only copy of the downloads, for instance), they are extracted with
  torchvision's ``extract_archive`` into a cache folder (:func:`cache_dir`) and read from there. Nothing
  is ever written into ``data_dir``.
* CIFAR-10: ``torchvision.datasets.CIFAR10`` over ``<data_dir>/cifar-10-batches-py`` (which also checks
  the files' MD5 sums).
* The CIFAR-10 subset ``<data_dir>/cifar10/{train_first4000,test_first1000}.npz`` is no torchvision
  format: :func:`read_cifar_npz` reads it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from lightning_sqn.problems.data.batches import Split

#: the IDX files of MNIST and Fashion-MNIST in ``<folder>/raw`` (torchvision's names)
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def cache_dir() -> Path:
    """Where extracted files go: ``$LIGHTNING_SQN_CACHE``, else ``$XDG_CACHE_HOME/lightning_sqn``, else
    ``~/.cache/lightning_sqn``."""
    if os.environ.get("LIGHTNING_SQN_CACHE"):
        return Path(os.environ["LIGHTNING_SQN_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lightning_sqn"


def idx_files_present(raw: Path, names: Sequence[str] = IDX_FILES) -> bool:
    """Whether every IDX file is in ``raw``, uncompressed or gzipped."""
    return all((raw / n).is_file() or (raw / f"{n}.gz").is_file() for n in names)


def _extracted_root(data_dir: Path, folder: str, names: Sequence[str]) -> Path:
    """A root from which torchvision finds ``<folder>/raw/<name>`` uncompressed: ``data_dir`` itself when
    the files are there, else a cache folder into which the ``.gz`` files are extracted (once; an atomic
    rename, so that DDP ranks extracting at the same time do not see half a file)."""
    from torchvision.datasets.utils import extract_archive

    raw = data_dir / folder / "raw"
    if all((raw / n).is_file() for n in names):
        return data_dir
    key = hashlib.sha1(str(raw.resolve()).encode()).hexdigest()[:16]
    root = cache_dir() / key
    target = root / folder / "raw"
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        source = raw / name if (raw / name).is_file() else raw / f"{name}.gz"
        done = target / name
        if done.is_file() and done.stat().st_mtime >= source.stat().st_mtime:
            continue
        with tempfile.TemporaryDirectory(dir=target) as scratch:
            if source.suffix == ".gz":
                extract_archive(str(source), scratch)
            else:
                (Path(scratch) / name).write_bytes(source.read_bytes())
            os.replace(Path(scratch) / name, done)
    return root


def read_mnist(data_dir: str | Path, folder: str = "MNIST") -> dict[str, Split]:
    """The training and test splits of MNIST (``folder="MNIST"``) or Fashion-MNIST (``"FashionMNIST"``)
    through torchvision: images ``(N, 1, 28, 28)`` uint8 and labels int64.

    Raises:
        FileNotFoundError: an IDX file is missing (neither uncompressed nor ``.gz``).
    """
    import torchvision

    data_dir = Path(data_dir)
    raw = data_dir / folder / "raw"
    missing = [n for n in IDX_FILES if not (raw / n).is_file() and not (raw / f"{n}.gz").is_file()]
    if missing:
        raise FileNotFoundError(
            f"missing {', '.join(str(raw / f'{n}[.gz]') for n in missing)}. Put the IDX files there "
            f"(gzipped or not) or pass download=True to fetch them with "
            f"torchvision.datasets.{folder}(root={str(data_dir)!r}, download=True)."
        )
    root = _extracted_root(data_dir, folder, IDX_FILES)
    dataset = getattr(torchvision.datasets, folder)
    splits = {}
    for name, train in (("train", True), ("test", False)):
        ds = dataset(root=str(root), train=train, download=False)
        splits[name] = (ds.data[:, None].contiguous(), ds.targets.long())
    return splits


def read_cifar10(data_dir: str | Path) -> dict[str, Split]:
    """The full CIFAR-10 (``<data_dir>/cifar-10-batches-py``) through ``torchvision.datasets.CIFAR10``:
    images ``(N, 3, 32, 32)`` uint8 and labels int64.

    Raises:
        RuntimeError: torchvision's, when a file is missing or its MD5 sum is wrong.
    """
    import torchvision

    splits = {}
    for name, train in (("train", True), ("test", False)):
        ds = torchvision.datasets.CIFAR10(root=str(data_dir), train=train, download=False)
        images = torch.from_numpy(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))
        splits[name] = (images, torch.as_tensor(ds.targets, dtype=torch.int64))
    return splits


def read_cifar_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read an ``.npz`` with ``images`` (uint8, ``N x 32 x 32 x 3``, NHWC, RGB) and ``labels`` (the
    CIFAR-10 subset's format, which torchvision has no reader for).

    Returns:
        images ``(N, 3, 32, 32)`` uint8 (NCHW, contiguous) and labels ``(N,)`` int64.
    """
    with np.load(path, allow_pickle=False) as npz:
        images, labels = npz["images"], npz["labels"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"{path}: images must be uint8 N x H x W x 3, got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"{path}: {images.shape[0]} images but labels of shape {labels.shape}")
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2)), labels.astype(np.int64)


__all__ = ["IDX_FILES", "cache_dir", "idx_files_present", "read_cifar10", "read_cifar_npz", "read_mnist"]
