"""Reading scalars from the TensorBoard logs of repeated runs, and their statistics over seeds.

Layout: one directory of event files per (run, seed), named ``seed_<s>`` (or Lightning's ``version_<n>``)
under a directory named after the run, anywhere below the log root::

    <root>/<run_name>/seed_<s>/events.out.tfevents.*        # TensorBoardLogger(root, name=run_name,
    <root>/<run_name>/version_<n>/events.out.tfevents.*     #   version=f"seed_{s}") or its default
    <root>/mnist/lsr1/seed_0/...                            # nested run names: "mnist/lsr1"

Every directory that directly holds event files is one seed; its parent's path relative to the root is
the run name, its own name gives the seed (the integer of ``seed_<s>`` / ``version_<n>``, else the name).

Epochs: Lightning writes an ``epoch`` scalar (0-based) at every step at which ``self.log`` metrics are
written; a value logged at the end of Lightning epoch ``e`` belongs to epoch ``e + 1`` here, i.e. the
x-axis counts completed training epochs as the paper does ("number of epochs needed to surpass target test
loss"). A tag written without ``epoch`` alongside (e.g. by the callbacks, which log straight to the
logger) once per epoch gets epochs 1, 2, ... by order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

Seed = int | str
Series = tuple[np.ndarray, np.ndarray]  # (steps or epochs, values)
Scalars = dict[str, dict[Seed, Series]]

#: the cumulative training wall time logged by ClassificationTask (x-axis of the time plots)
TIME_TAG = "train/time"
#: the cumulative backpropagations (gradients + curvature-vector products) logged per step by the tasks
BACKPROPS_TAG = "train/backprops"
#: cumulative curvature-vector products (Hessian- or Gauss-Newton-vector) per step, logged by the tasks
CURVATURE_PRODUCTS_TAG = "train/curvature_products"
#: the cumulative skipped-update percentage logged by SkippedUpdateCounter (default prefix "sqn/")
SKIPPED_TOTAL_TAG = "sqn/skipped_updates_total_pct"
#: the per-epoch skipped-update percentage logged by SkippedUpdateCounter
SKIPPED_EPOCH_TAG = "sqn/skipped_updates_pct"

_EVENTS = "events.out.tfevents"
_SEED_DIR = re.compile(r"^(?:seed|version)_(\d+)$")


# ---------------------------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class _Event:
    wall_time: float
    step: int
    value: float


def _log_dirs(root: Path) -> list[Path]:
    """The directories under ``root`` (itself included) that directly hold event files, sorted."""
    dirs = {p.parent for p in root.rglob(f"{_EVENTS}*") if p.is_file()}
    return sorted(dirs)


def _run_and_seed(root: Path, log_dir: Path) -> tuple[str, Seed]:
    match = _SEED_DIR.match(log_dir.name)
    seed: Seed = int(match.group(1)) if match else log_dir.name
    if log_dir == root or log_dir.parent == root:  # <root>/seed_<s>: the root is the run
        return root.resolve().name, seed
    return log_dir.parent.relative_to(root).as_posix(), seed


_CACHE: dict[tuple[str, tuple[tuple[str, int, int], ...]], dict[str, list[_Event]]] = {}


def _read_dir(log_dir: Path) -> dict[str, list[_Event]]:
    """All scalars of one directory of event files (every event kept); cached while the files are the same."""
    files = sorted(log_dir.glob(f"{_EVENTS}*"))
    key = (str(log_dir), tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files))
    if key not in _CACHE:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        # size 0 keeps every scalar (the default samples 10,000); skip the other kinds
        guidance = {"scalars": 0, "histograms": 1, "images": 1, "audio": 1, "tensors": 1}
        acc = EventAccumulator(str(log_dir), size_guidance=guidance)
        acc.Reload()
        _CACHE[key] = {
            tag: [_Event(e.wall_time, int(e.step), float(e.value)) for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"]
        }
    return _CACHE[key]


def _epochs(events: list[_Event], epoch_events: list[_Event]) -> np.ndarray:
    """Completed-epoch count (1-based) of each event: Lightning's ``epoch`` scalar at the same step (the
    one written closest in time when a step has several) plus one; by order when some step has none."""
    by_step: dict[int, list[_Event]] = {}
    for e in epoch_events:
        by_step.setdefault(e.step, []).append(e)
    epochs = []
    for e in events:
        candidates = by_step.get(e.step)
        if not candidates:
            return np.arange(1, len(events) + 1, dtype=np.int64)
        nearest = min(candidates, key=lambda c: abs(c.wall_time - e.wall_time))
        epochs.append(round(nearest.value) + 1)
    return np.asarray(epochs, dtype=np.int64)


def load_scalars(
    root: str | Path, tag: str, *, x: Literal["epoch", "step", "wall_time"] = "epoch"
) -> Scalars:
    """Read ``tag`` from every run and seed under ``root``.

    Args:
        root: the log root (see the module docstring for the layout).
        tag: a scalar tag, e.g. ``"test/error"``.
        x: ``"epoch"``: completed training epochs (1-based; see the module docstring); ``"step"``: the
            logged step; ``"wall_time"``: seconds since the first event of that seed's directory.

    Returns:
        ``{run: {seed: (x, values)}}`` with NumPy arrays sorted by x (one value per x: the last written);
        runs and seeds without the tag are left out.

    Raises:
        FileNotFoundError: ``root`` does not exist or holds no event files.
        ValueError: an unknown ``x``.
    """
    if x not in ("epoch", "step", "wall_time"):
        raise ValueError(f"x must be 'epoch', 'step' or 'wall_time', got {x!r}")
    root = Path(root)
    dirs = _log_dirs(root) if root.is_dir() else []
    if not dirs:
        raise FileNotFoundError(f"no TensorBoard event files ({_EVENTS}*) under {root}")
    out: Scalars = {}
    for log_dir in dirs:
        scalars = _read_dir(log_dir)
        events = scalars.get(tag)
        if not events:
            continue
        if x == "epoch":
            xs = _epochs(events, scalars.get("epoch", []))
        elif x == "step":
            xs = np.asarray([e.step for e in events], dtype=np.int64)
        else:
            start = min(e.wall_time for evs in scalars.values() for e in evs)
            xs = np.asarray([e.wall_time - start for e in events], dtype=np.float64)
        last: dict[float, float] = {}
        for xv, e in zip(xs.tolist(), events, strict=True):
            last[xv] = e.value
        keys = sorted(last)
        run, seed = _run_and_seed(root, log_dir)
        if seed in out.get(run, {}):
            raise ValueError(f"two directories under {root} give run {run!r} seed {seed!r} (e.g. {log_dir})")
        out.setdefault(run, {})[seed] = (
            np.asarray(keys, dtype=xs.dtype),
            np.asarray([last[k] for k in keys]),
        )
    return out


# ---------------------------------------------------------------------------------------------- statistics
@dataclass(frozen=True)
class Curve:
    """Mean and standard deviation over seeds at each x (``count`` seeds had a value there)."""

    x: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0


def aggregate(per_seed: Mapping[Seed, Series]) -> Curve:
    """Mean ± sample std (ddof=1) over the seeds at every x any seed has."""
    xs = sorted({float(v) for xs, _ in per_seed.values() for v in xs})
    lookup = [dict(zip(map(float, s), map(float, v), strict=True)) for s, v in per_seed.values()]
    mean, std, count = [], [], []
    for xv in xs:
        vals = [d[xv] for d in lookup if xv in d]
        m, s = mean_std(vals)
        mean.append(m)
        std.append(s)
        count.append(len(vals))
    return Curve(np.asarray(xs), np.asarray(mean), np.asarray(std), np.asarray(count))


def epochs_to_target(data: Scalars, target: float) -> dict[str, dict[Seed, int | None]]:
    """Per run and seed, the first epoch (x) whose value is ``<= target``; ``None`` if never reached.

    ``data`` is :func:`load_scalars` output with ``x="epoch"`` (e.g. of ``"test/error"``). Values and
    target are compared in float32, the precision TensorBoard stores scalars in, so an error of exactly
    1.1 % reaches the target 1.1 (1.1 is 1.10000002 in float32).
    """
    out: dict[str, dict[Seed, int | None]] = {}
    for run, seeds in data.items():
        out[run] = {}
        for seed, (xs, values) in seeds.items():
            hit = np.flatnonzero(values.astype(np.float32) <= np.float32(target))
            out[run][seed] = int(xs[hit[0]]) if hit.size else None
    return out


def against(data: Scalars, x: Scalars) -> Scalars:
    """``data`` (loaded with ``x="step"``) re-indexed by another scalar logged per step, e.g. the cumulative
    backpropagations ``train/backprops``: each value gets the ``x`` value of the latest step at or before
    its own (an epoch-end metric gets the count of the epoch's last step). Runs and seeds without ``x``,
    and points logged before the first ``x``, are left out."""
    out: Scalars = {}
    for run, seeds in data.items():
        for seed, (steps, values) in seeds.items():
            if seed not in x.get(run, {}):
                continue
            x_steps, x_values = x[run][seed]
            index = np.searchsorted(x_steps, steps, side="right") - 1
            keep = index >= 0
            if keep.any():
                out.setdefault(run, {})[seed] = (x_values[index[keep]], values[keep])
    return out


def final_values(data: Scalars) -> dict[str, dict[Seed, float]]:
    """Per run and seed, the value at the largest x (the end of training)."""
    return {run: {seed: float(v[-1]) for seed, (_, v) in seeds.items()} for run, seeds in data.items()}
