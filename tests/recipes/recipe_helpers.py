"""Helpers of the recipe tests: the runner imported from ``recipes/run.py`` and tiny fake MNIST / CIFAR-10
files in torchvision's layout (random images; the recipes' smoke presets read them through the real
readers), so that nothing depends on ``shared/data``."""

from __future__ import annotations

import gzip
import importlib.util
import struct
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
RUNNER = RECIPES / "run.py"
#: every image count the smoke presets need (at most 64 training and 32 test images)
N_TRAIN, N_TEST = 64, 32


def load_script(path: Path, name: str) -> ModuleType:
    """The script at ``path`` imported as module ``name`` (once per session)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file runs
        spec.loader.exec_module(module)
    return sys.modules[name]


def load_runner() -> ModuleType:
    return load_script(RUNNER, "recipes_run")


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_fake_data(root: Path, seed: int = 0) -> Path:
    """``<root>/{MNIST,FashionMNIST}/raw/*-ubyte.gz`` and
    ``<root>/cifar10/{train_first4000,test_first1000}.npz`` (the subset layout) with ``N_TRAIN`` /
    ``N_TEST`` random images whose label shifts their brightness, and ``<root>/FACES/{train,test}.npz``
    (random 625-pixel images in [0, 1])."""
    rng = np.random.default_rng(seed)
    for folder in ("MNIST", "FashionMNIST"):
        raw = root / folder / "raw"
        raw.mkdir(parents=True)
        for prefix, n in (("train", N_TRAIN), ("t10k", N_TEST)):
            labels = rng.integers(0, 10, n, dtype=np.uint8)
            images = (rng.integers(0, 100, (n, 28, 28)) + 15 * labels[:, None, None]).astype(np.uint8)
            (raw / f"{prefix}-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(images)))
            (raw / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(labels)))
    cifar = root / "cifar10"
    cifar.mkdir()
    for name, n in (("train_first4000", N_TRAIN), ("test_first1000", N_TEST)):
        labels = rng.integers(0, 10, n).astype(np.int64)
        images = (rng.integers(0, 100, (n, 32, 32, 3)) + 15 * labels[:, None, None, None]).astype(np.uint8)
        np.savez(cifar / f"{name}.npz", images=images, labels=labels)
    faces = root / "FACES"  # the layout FacesDataModule reads (a user supplies the real set)
    faces.mkdir()
    for name, n in (("train", N_TRAIN), ("test", N_TEST)):
        np.savez(faces / f"{name}.npz", x=rng.random((n, 625), dtype=np.float32))
    return root
