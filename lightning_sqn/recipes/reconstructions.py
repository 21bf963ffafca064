"""Reconstructions of an autoencoder recipe's trained runs (Kohler et al., Fig. 12): one PNG grid, the
first test images on the top row and each run's reconstructions of them below.

Each run is rebuilt from its ``recipe.yaml`` (the settings it trained with) through
:func:`~lightning_sqn.recipes.fit.instantiate` and loads the ``final_weights.pt`` its fit saved; the test
images come from the run's own DataModule (so ``data_dir`` must hold the data the run trained on; ``None``
for generated data such as CURVES).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from lightning_sqn.recipes.fit import WEIGHTS_FILE, instantiate


def trained_runs(root: Path, order: Sequence[str] = ()) -> dict[str, Path]:
    """``{run: seed folder}`` of the runs under ``root`` that saved final weights (each run's smallest
    seed), in ``order`` first and then sorted."""
    found: dict[str, Path] = {}
    for weights in sorted(root.rglob(WEIGHTS_FILE), key=lambda p: (p.parent.parent, p.parent.name)):
        run = weights.parent.parent.relative_to(root).as_posix()
        found.setdefault(run, weights.parent)
    return dict(
        sorted(found.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0]))
    )


def load_trained(folder: Path, data_dir: str | Path | None) -> tuple[Any, Any]:
    """The task of the run whose seed folder is ``folder``, with its final weights (eval mode), and its
    DataModule set up for testing."""
    settings = yaml.safe_load((folder / "recipe.yaml").read_text(encoding="utf-8"))
    cli, _ = instantiate(settings, seed=int(settings["seed"]), data_dir=data_dir, accelerator="cpu")
    task, datamodule = cli.model, cli.datamodule
    task.load_state_dict(torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True))
    task.eval()
    datamodule.setup("test")
    return task, datamodule


def reconstruction_grid(
    root: str | Path,
    path: str | Path,
    data_dir: str | Path | None,
    count: int = 10,
    order: Sequence[str] = (),
) -> Path | None:
    """Draw ``count`` test images and every trained run's reconstruction of them into ``path``; ``None``
    when no run under ``root`` saved weights.

    Raises:
        ValueError: ``count`` < 1, or a run whose task has no ``reconstruct`` (not an autoencoder).
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    runs = trained_runs(Path(root), order)
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows: list[tuple[str, torch.Tensor]] = []
    images = None
    for run, folder in runs.items():
        task, datamodule = load_trained(folder, data_dir)
        if not hasattr(task, "reconstruct"):
            raise ValueError(f"{run}: {type(task).__name__} does not reconstruct images (not an autoencoder)")
        x = datamodule.split("test")[0][:count].cpu().float()
        if images is None:
            images = x
        with torch.no_grad():
            rows.append((run, task.reconstruct(x)))
    assert images is not None
    columns = len(images)
    fig, axes = plt.subplots(
        len(rows) + 1, columns, figsize=(columns * 0.9, (len(rows) + 1) * 1.0), squeeze=False
    )
    for r, (label, batch) in enumerate([("test images", images), *rows]):
        for c in range(columns):
            ax = axes[r][c]
            ax.imshow(batch[c].reshape(images[c].shape[-2:]).numpy(), cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["load_trained", "reconstruction_grid", "trained_runs"]
