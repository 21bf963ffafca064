"""Summarise TensorBoard logs of repeated runs: curves with error bands and the paper's tables.

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

Command line::

    python -m lightning_sqn.report --logs lightning_logs --out report --tag test/error --targets 1.1 1.2 1.5

writes ``<out>/report.md`` (also printed) and ``<out>/<tag>_epoch.png`` (``<tag>_time.png`` too when the
runs logged ``train/time``, the cumulative training wall time of
:class:`~lightning_sqn.problems.task.ClassificationTask`).
"""

from __future__ import annotations

import argparse
import json
import math
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


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
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
        m, s = _mean_std(vals)
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


def final_values(data: Scalars) -> dict[str, dict[Seed, float]]:
    """Per run and seed, the value at the largest x (the end of training)."""
    return {run: {seed: float(v[-1]) for seed, (_, v) in seeds.items()} for run, seeds in data.items()}


# ---------------------------------------------------------------------------------------------- tables
def format_mean_std(values: Sequence[float], digits: int = 2) -> str:
    """``"mean ± std"`` over the seeds (sample std, ddof=1); a single seed's value alone (no spread to
    report)."""
    mean, std = _mean_std(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured markdown table (cells converted with ``str``, ``|`` escaped)."""

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), "|" + "|".join("---" for _ in header) + "|", *map(line, rows)])


def final_table(data: Scalars, *, label: str = "final test error (%)", digits: int = 2) -> str:
    """One row per run: number of seeds and the final value, mean ± std over seeds."""
    rows = []
    for run, seeds in sorted(final_values(data).items()):
        rows.append([run, len(seeds), format_mean_std(list(seeds.values()), digits)])
    return markdown_table(["run", "seeds", label], rows)


def _target_cell(per_seed: Mapping[Seed, int | None]) -> str:
    reached = [e for e in per_seed.values() if e is not None]
    if not reached:
        return "not reached"
    cell = format_mean_std(reached, 1)
    if len(reached) < len(per_seed):
        cell += f" ({len(reached)}/{len(per_seed)} seeds)"
    return cell


def target_table(
    data: Scalars,
    targets: Sequence[float],
    paper: Mapping[str, Mapping[str, object]] | None = None,
    *,
    label: str = "test error",
) -> str:
    """Epochs to reach ``value <= target`` per run: the per-seed first epochs (:func:`epochs_to_target`),
    then their mean ± std over the seeds that reached it; ``"not reached"`` when none did, and
    ``"(k/n seeds)"`` when only some did.

    Args:
        data: :func:`load_scalars` output with ``x="epoch"``.
        targets: the targets, in the tag's unit (percent for ``test/error``).
        paper: optional ``{run: {str(target): epochs}}`` (e.g. the paper's Table 1); adds a ``paper``
            column after each target (empty where not given).
        label: what the targets are about, for the header.
    """
    hits = {t: epochs_to_target(data, t) for t in targets}
    header = ["run"]
    for t in targets:
        header.append(f"epochs to {label} ≤ {t:g}")
        if paper is not None:
            header.append("paper")
    rows = []
    for run in sorted(data):
        row: list[object] = [run]
        for t in targets:
            row.append(_target_cell(hits[t][run]))
            if paper is not None:
                row.append(_paper_value(paper.get(run, {}), t))
        rows.append(row)
    return markdown_table(header, rows)


def _paper_value(values: Mapping[str, object], target: float) -> str:
    for key, value in values.items():
        if math.isclose(float(key), target):
            return str(value)
    return ""


def skipped_table(total: Scalars, per_epoch: Scalars | None = None) -> str:
    """Skipped curvature updates per run (:class:`~lightning_sqn.callbacks.SkippedUpdateCounter`): the
    percentage over the whole fit (the last ``skipped_updates_total_pct``), mean ± std over seeds, and,
    with ``per_epoch`` (``skipped_updates_pct``), the largest per-epoch percentage over epochs and seeds."""
    header = ["run", "seeds", "skipped updates (%)"]
    if per_epoch is not None:
        header.append("max per epoch (%)")
    rows = []
    for run, seeds in sorted(final_values(total).items()):
        row: list[object] = [run, len(seeds), format_mean_std(list(seeds.values()), 2)]
        if per_epoch is not None:
            series = per_epoch.get(run, {})
            row.append(f"{max(float(v.max()) for _, v in series.values()):.2f}" if series else "")
        rows.append(row)
    return markdown_table(header, rows)


# ---------------------------------------------------------------------------------------------- plots
def plot_curves(
    data: Scalars,
    path: str | Path,
    *,
    times: Scalars | None = None,
    ylabel: str = "test error (%)",
    title: str | None = None,
    logy: bool = False,
) -> Path:
    """One line per run (the mean over seeds) with a shaded ± std band, saved as a PNG.

    Args:
        data: :func:`load_scalars` output with ``x="epoch"``.
        path: the PNG to write (parent directories are created).
        times: ``load_scalars(root, "train/time")`` (x="epoch"): plot against the mean cumulative
            training wall time at each epoch instead of the epoch.
        ylabel, title: axis label and title.
        logy: logarithmic y-axis.

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(fig)  # Agg without pyplot: no global backend state, no display needed
    ax = fig.add_subplot()
    for run in sorted(data):
        curve = aggregate(data[run])
        x = curve.x
        if times is not None:
            if run not in times:
                continue
            t = aggregate(times[run])
            lookup = dict(zip(t.x.tolist(), t.mean.tolist(), strict=True))
            keep = np.asarray([xv in lookup for xv in x.tolist()], dtype=bool)
            x = np.asarray([lookup[xv] for xv in x[keep].tolist()])
            curve = Curve(x, curve.mean[keep], curve.std[keep], curve.count[keep])
        n = int(curve.count.max()) if curve.count.size else 0
        (line,) = ax.plot(curve.x, curve.mean, label=f"{run} (n={n})")
        ax.fill_between(
            curve.x, curve.mean - curve.std, curve.mean + curve.std, color=line.get_color(), alpha=0.2
        )
    ax.set_xlabel("training wall time (s)" if times is not None else "epoch")
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


# ---------------------------------------------------------------------------------------------- command line
def _tag_file(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", tag)


def build_report(
    logs: str | Path,
    out: str | Path,
    *,
    tag: str = "test/error",
    targets: Sequence[float] = (),
    paper: Mapping[str, Mapping[str, object]] | None = None,
    logy: bool = False,
) -> str:
    """Write ``<out>/report.md`` and the PNGs for ``logs`` (see the module docstring); returns the markdown.

    Raises:
        FileNotFoundError: no event files under ``logs``.
        ValueError: no run logged ``tag``.
    """
    logs, out = Path(logs), Path(out)
    data = load_scalars(logs, tag)
    if not data:
        raise ValueError(f"no run under {logs} logged the scalar {tag!r}")
    out.mkdir(parents=True, exist_ok=True)
    label = "test error (%)" if tag == "test/error" else tag
    sections = [f"# Report: `{tag}` from `{logs}`", "", "## Final value (mean ± std over seeds)", ""]
    sections += [final_table(data, label=f"final {label}"), ""]
    if targets:
        sections += ["## Epochs to target (first epoch with value ≤ target)", ""]
        sections += [target_table(data, targets, paper, label=tag), ""]
    skipped = load_scalars(logs, SKIPPED_TOTAL_TAG)
    if skipped:
        sections += ["## Skipped curvature updates", ""]
        sections += [skipped_table(skipped, load_scalars(logs, SKIPPED_EPOCH_TAG)), ""]
    stem = _tag_file(tag)
    figures = [plot_curves(data, out / f"{stem}_epoch.png", ylabel=label, logy=logy)]
    times = load_scalars(logs, TIME_TAG)
    if times:
        figures.append(plot_curves(data, out / f"{stem}_time.png", times=times, ylabel=label, logy=logy))
    sections += ["## Curves", ""] + [f"![{f.stem}]({f.name})" for f in figures] + [""]
    text = "\n".join(sections)
    (out / "report.md").write_text(text, encoding="utf-8")
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m lightning_sqn.report --logs DIR --out DIR [--tag T] [--targets ...] [--paper JSON]``."""
    parser = argparse.ArgumentParser(
        prog="python -m lightning_sqn.report",
        description="Curves (mean ± std over seeds) and markdown tables from TensorBoard logs laid out as "
        "<logs>/<run>/seed_<s>/ (or Lightning's <save_dir>/<name>/version_<n>/).",
    )
    parser.add_argument("--logs", required=True, type=Path, help="the log root")
    parser.add_argument("--out", required=True, type=Path, help="where report.md and the PNGs go")
    parser.add_argument("--tag", default="test/error", help="the scalar to report (default: test/error)")
    parser.add_argument(
        "--targets", type=float, nargs="*", default=[], help="targets for the epochs-to-target table"
    )
    parser.add_argument(
        "--paper",
        type=Path,
        help='JSON {"run": {"target": epochs}} shown in a "paper" column next to each target',
    )
    parser.add_argument("--logy", action="store_true", help="logarithmic y-axis")
    args = parser.parse_args(argv)
    paper = json.loads(args.paper.read_text(encoding="utf-8")) if args.paper else None
    try:
        text = build_report(
            args.logs, args.out, tag=args.tag, targets=args.targets, paper=paper, logy=args.logy
        )
    except (FileNotFoundError, ValueError) as err:
        parser.error(str(err))
    print(text)
    return 0


__all__ = [
    "Curve",
    "aggregate",
    "build_report",
    "epochs_to_target",
    "final_table",
    "final_values",
    "format_mean_std",
    "load_scalars",
    "main",
    "markdown_table",
    "plot_curves",
    "skipped_table",
    "target_table",
]

if __name__ == "__main__":
    raise SystemExit(main())
