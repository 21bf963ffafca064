"""Markdown tables of the reports: final values, epochs to target, skipped updates, per-epoch values."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from lightning_sqn.report.scalars import Scalars, Seed, epochs_to_target, final_values, mean_std


def format_mean_std(values: Sequence[float], digits: int = 2) -> str:
    """``"mean ± std"`` over the seeds (sample std, ddof=1); a single seed's value alone (no spread to
    report)."""
    mean, std = mean_std(values)
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


def skipped_table(
    total: Scalars, per_epoch: Scalars | None = None, paper: Mapping[str, str] | None = None
) -> str:
    """Skipped curvature updates per run (:class:`~lightning_sqn.callbacks.SkippedUpdateCounter`): the
    percentage over the whole fit (the last ``skipped_updates_total_pct``), mean ± std over seeds, and,
    with ``per_epoch`` (``skipped_updates_pct``), the largest per-epoch percentage over epochs and seeds.
    With ``paper`` (``{run: what the paper reports}``) a ``paper`` column ("–" where it has nothing)."""
    header = ["run", "seeds", "skipped updates (%)"]
    if per_epoch is not None:
        header.append("max per epoch (%)")
    if paper is not None:
        header.append("paper")
    rows = []
    for run, seeds in sorted(final_values(total).items()):
        row: list[object] = [run, len(seeds), format_mean_std(list(seeds.values()), 2)]
        if per_epoch is not None:
            series = per_epoch.get(run, {})
            row.append(f"{max(float(v.max()) for _, v in series.values()):.2f}" if series else "")
        if paper is not None:
            row.append(paper.get(run, "–"))
        rows.append(row)
    return markdown_table(header, rows)


def epoch_table(data: Scalars, order: Sequence[str] = (), digits: int = 2) -> str:
    """Rows: runs (``order`` first, then the others sorted); columns: epochs; cells: mean (± std over
    seeds) of the value at that epoch with ``digits`` decimals, empty where no seed has one."""
    epochs = sorted({int(e) for run in data.values() for xs, _ in run.values() for e in xs})
    rows = []
    for run in [r for r in order if r in data] + sorted(set(data) - set(order)):
        cells: list[object] = [run, len(data[run])]
        for epoch in epochs:
            vals = [float(v[list(xs).index(epoch)]) for xs, v in data[run].values() if epoch in list(xs)]
            cells.append(format_mean_std(vals, digits) if vals else "")
        rows.append(cells)
    return markdown_table(["run", "seeds", *[str(e) for e in epochs]], rows)


def runs_table(summaries: Sequence[Mapping[str, object]], runs: Sequence[str], labels: Sequence[str]) -> str:
    """Per run (mean ± std over its seeds' ``summary.json``): batch, epochs, optimizer steps, accepted
    quasi-Newton steps (L-SR1: rho > eta; L-BFGS: a decrease found), fit and training wall time. ``runs``
    are the summaries' run names, ``labels`` the row labels; runs without a summary are left out; an
    empty string when none has one."""
    rows = []
    for run, label in zip(runs, labels, strict=True):
        mine = [s for s in summaries if s["run"] == run]
        if not mine:
            continue
        counters = [s["counters"] for s in mine if s.get("counters")]
        accepted = (
            format_mean_std([100.0 * c["accepted_steps"] / max(c["steps"], 1) for c in counters], 1)  # type: ignore[index]
            if counters
            else "–"
        )
        rows.append(
            [
                label,
                mine[0]["batch_size"],
                mine[0]["epochs"],
                format_mean_std([float(s["global_steps"]) for s in mine], 0),  # type: ignore[arg-type]
                accepted,
                format_mean_std([float(s["fit_wall_time_s"]) for s in mine], 1),  # type: ignore[arg-type]
                format_mean_std([float(s["train_time_s"] or "nan") for s in mine], 1),  # type: ignore[arg-type]
            ]
        )
    if not rows:
        return ""
    header = [
        "run",
        "batch",
        "epochs",
        "steps",
        "accepted steps (%)",
        "fit wall time (s)",
        "training time (s)",
    ]
    return markdown_table(header, rows)


def table1(
    per_group: Mapping[str, Scalars],
    columns: Mapping[str, float],
    *,
    batch_sizes: Mapping[str, object],
    paper: Mapping[str, Sequence[object]] | None = None,
    order: Sequence[str] = (),
) -> str:
    """The layout of Ramamurthy & Duffy's Table 1: one row per run, per group (a batch size) the epochs
    needed to reach the group's target, mean ± std over the seeds that reached it, next to the paper's.

    Args:
        per_group: ``{group: load_scalars(<group folder>, "test/error")}``.
        columns: ``{group: target}``, in the table's column order.
        batch_sizes: ``{group: batch size}`` for the header ("?" where unknown).
        paper: ``{run: [value per column]}`` (``None`` cells print as "–").
        order: the rows (default: every run of any group, sorted).
    """
    paper = paper or {}
    runs = list(order) or sorted({run for data in per_group.values() for run in data})
    header = ["optimizer"]
    for group, target in columns.items():
        header += [f"≤ {target:g}% @ batch {batch_sizes.get(group, '?')}", "paper"]
    rows = []
    for run in runs:
        row: list[object] = [run]
        for index, (group, target) in enumerate(columns.items()):
            data = per_group.get(group, {})
            if run in data:
                cell = _target_cell(epochs_to_target({run: data[run]}, float(target))[run])
                if cell == "not reached":
                    cell += f" in {max(int(xs.max()) for xs, _ in data[run].values())}"
            else:
                cell = "not run"
            values = list(paper.get(run) or [])
            row += [cell, values[index] if index < len(values) and values[index] is not None else "–"]
        rows.append(row)
    return markdown_table(header, rows)
