"""The one report builder: PNG curves and ``report.md`` from the TensorBoard logs of repeated runs.

Used by ``lightning-sqn report LOGS`` and ``python recipes/run.py report CONFIG``. A recipe's log root
(``<out>/<paper>/<experiment>``) holds ``recipe_config.yaml``, the recipe as it was run (written by the
runner); its ``report`` section (title, targets, the paper's values), ``groups`` (panels) and ``runs``
(row order) shape the report. Any other log root gets the same report with one panel and the runs found.

Per panel (group): curves against epochs and training time, the value per epoch, the final value, epochs
to each target (with the paper's epochs when given), skipped curvature updates (with what the paper
reports), and steps / accepted steps / wall time per run from the runs' ``summary.json``; then the
paper's Table 1 when the recipe has a ``report.table1``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lightning_sqn.report.plots import plot_curves
from lightning_sqn.report.scalars import (
    BACKPROPS_TAG,
    CURVATURE_PRODUCTS_TAG,
    SKIPPED_EPOCH_TAG,
    SKIPPED_TOTAL_TAG,
    TIME_TAG,
    Scalars,
    against,
    load_scalars,
)
from lightning_sqn.report.tables import (
    epoch_table,
    final_table,
    runs_table,
    skipped_table,
    table1,
    target_table,
)

#: the recipe as it was run, at the root of its logs (written by ``recipes/run.py fit``)
RECIPE_FILE = "recipe_config.yaml"
#: the x axes a report can draw and their labels
X_AXES = {
    "epoch": "epoch",
    "time": "training wall time (s)",
    "backprops": "backpropagations",
    "step": "optimizer steps (iterations) done",
    "curvature_products": "curvature-vector products",
}
#: the count axes: the per-step cumulative scalar each is read from
COUNT_TAGS = {"backprops": BACKPROPS_TAG, "curvature_products": CURVATURE_PRODUCTS_TAG}
#: the epochs the per-epoch table shows when a run has more than a dozen (and always the last)
EPOCH_COLUMNS = (1, 2, 3, 5, 10, 15, 20, 30, 50, 80, 100, 120, 150, 200)


@dataclass(frozen=True)
class ReportSpec:
    """What a report shows.

    Attributes:
        title: the report's title.
        tag: the scalar reported (default ``test/error``).
        ylabel: its axis label (default: "test error (%)" for ``test/error``, else the tag).
        x: the x axes of the curves: ``"epoch"``, ``"time"`` (training wall time), ``"backprops"``
            (cumulative gradients + curvature-vector products, ``train/backprops``), ``"step"``
            (optimizer steps: Hessian-free iterations) and/or ``"curvature_products"``
            (``train/curvature_products``).
        also: more tags drawn on the same x axes (figures only; the tables are the main tag's).
        targets: targets of the epochs-to-target table, in the tag's unit.
        paper_targets: ``{run: {str(target): epochs}}``, the paper's epochs next to ours.
        paper_skipped: what the paper reports on skipped updates: a string for every run, or a mapping
            from group and/or run names to such values.
        table1: ``{"columns": {group: target}, "paper": {run: [per column]}, "title": ...}``.
        groups: the panels (sub-folders of the log root); ``(None,)``: the root is one panel.
        runs: the row order (runs not named follow, sorted).
        logy: logarithmic y axis.
        digits: decimals of the values in the per-epoch and final tables.
        reconstructions: test images drawn with each run's reconstructions (autoencoder recipes; the
            recipe runner draws them, see :mod:`lightning_sqn.recipes.reconstructions`); 0: none.
    """

    title: str = ""
    tag: str = "test/error"
    ylabel: str | None = None
    x: tuple[str, ...] = ("epoch", "time")
    also: tuple[str, ...] = ()
    targets: tuple[float, ...] = ()
    paper_targets: Mapping[str, Mapping[str, object]] | None = None
    paper_skipped: Any = None
    table1: Mapping[str, Any] | None = None
    groups: tuple[str | None, ...] = (None,)
    runs: tuple[str, ...] = field(default_factory=tuple)
    logy: bool = False
    digits: int = 2
    reconstructions: int = 0

    @classmethod
    def from_recipe(cls, config: Mapping[str, Any]) -> ReportSpec:
        """The spec of a recipe config (:func:`lightning_sqn.recipes.config.load_config`'s result)."""
        settings = dict(config.get("report") or {})
        known = {
            "title",
            "tag",
            "ylabel",
            "x",
            "also",
            "targets",
            "paper_skipped",
            "table1",
            "logy",
            "digits",
            "reconstructions",
        }
        unknown = sorted(set(settings) - known)
        if unknown:
            raise ValueError(
                f"report: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}"
            )
        return cls(
            title=str(settings.get("title") or config.get("name", "")),
            tag=settings.get("tag", "test/error"),
            ylabel=settings.get("ylabel"),
            x=tuple(settings.get("x", ("epoch",))),
            also=tuple(settings.get("also") or ()),
            targets=tuple(float(t) for t in settings.get("targets") or ()),
            paper_skipped=settings.get("paper_skipped"),
            table1=settings.get("table1"),
            groups=tuple(config.get("groups") or (None,)),
            runs=tuple(config.get("runs") or ()),
            logy=bool(settings.get("logy", False)),
            digits=int(settings.get("digits", 2)),
            reconstructions=int(settings.get("reconstructions", 0)),
        )

    def __post_init__(self) -> None:
        unknown = sorted(set(self.x) - set(X_AXES))
        if unknown:
            raise ValueError(f"report.x: unknown axis {', '.join(unknown)}; choose from {', '.join(X_AXES)}")

    @property
    def label(self) -> str:
        return self.ylabel or _label(self.tag)


def _label(tag: str) -> str:
    return "test error (%)" if tag == "test/error" else tag


def _figures(
    root: Path,
    out: Path,
    tag: str,
    data: Scalars,
    spec: ReportSpec,
    axes: Mapping[str, Scalars],
    title: str,
    prefix: str,
    ylabel: str,
) -> list[Path]:
    """The PNGs of one tag (``data``: its per-epoch values) against each of ``spec.x``; ``axes`` holds the
    panel's x-axis scalars, read once (:func:`_x_axes`)."""
    stem = _file_stem(tag)
    figures = []
    kwargs = {"ylabel": ylabel, "title": title, "logy": spec.logy}
    # the tag by logged step, read once for the step and count axes
    by_step = load_scalars(root, tag, x="step") if set(spec.x) - {"epoch", "time"} else {}
    for axis in spec.x:
        path = out / f"{prefix}{stem}_{axis}.png"
        if axis == "epoch":
            figures.append(plot_curves(data, path, **kwargs))
        elif axis == "time":
            if axes["time"]:
                figures.append(plot_curves(data, path, times=axes["time"], **kwargs))
        elif axis == "step":  # Lightning logs after step k (0-based) at step k: k + 1 steps are done
            done = {
                run: {seed: (xs + 1, ys) for seed, (xs, ys) in seeds.items()}
                for run, seeds in by_step.items()
            }
            figures.append(plot_curves(done, path, xlabel=X_AXES[axis], **kwargs))
        else:
            counts = against(by_step, axes[axis])
            if counts:
                figures.append(plot_curves(counts, path, xlabel=X_AXES[axis], **kwargs))
    return figures


def _x_axes(root: Path, spec: ReportSpec) -> dict[str, Scalars]:
    """The scalars the time and count axes of ``spec.x`` need (empty when not drawn)."""
    axes = {"time": load_scalars(root, TIME_TAG) if "time" in spec.x else {}}
    for axis, tag in COUNT_TAGS.items():
        axes[axis] = load_scalars(root, tag, x="step") if axis in spec.x else {}
    return axes


def paper_note(paper: Any, group: str | None, run: str) -> str:
    """The paper's value for ``run`` of ``group`` from ``paper_skipped``: a string (every run), or a
    mapping from group and/or run names to those; "–" where it says nothing."""
    if isinstance(paper, str):
        return paper
    if isinstance(paper, Mapping):
        if group is not None and group in paper:
            return paper_note(paper[group], None, run)
        if run in paper:
            return paper_note(paper[run], None, run)
    return "–"


def _file_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)


def _shown_epochs(data: Scalars) -> Scalars:
    """``data`` restricted to :data:`EPOCH_COLUMNS` and each run's last epoch when runs are longer than 12
    epochs (a table row per epoch of a 200-epoch run is unreadable)."""
    last = max((int(xs.max()) for seeds in data.values() for xs, _ in seeds.values() if xs.size), default=0)
    if last <= 12:
        return data
    out: Scalars = {}
    for run, seeds in data.items():
        out[run] = {}
        for seed, (xs, values) in seeds.items():
            keep = [i for i, e in enumerate(xs.tolist()) if e in EPOCH_COLUMNS or e == int(xs.max())]
            out[run][seed] = (xs[keep], values[keep])
    return out


def _summaries(root: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(root.rglob("summary.json"))]


def _panel(
    spec: ReportSpec, root: Path, out: Path, group: str | None, summaries: Sequence[Mapping[str, Any]]
) -> tuple[list[str], Scalars]:
    """The markdown lines and the data of one panel (an empty list when it has no logs of the tag)."""
    group_root = root if group is None else root / group
    try:
        data = load_scalars(group_root, spec.tag)
    except FileNotFoundError:
        return [], {}
    if not data:
        return [], {}
    title = (spec.title or root.name) + (f" ({group})" if group else "")
    prefix = f"{group}_" if group else ""
    axes = _x_axes(group_root, spec)
    figures = _figures(group_root, out, spec.tag, data, spec, axes, title, prefix, spec.label)
    for tag in spec.also:
        extra = load_scalars(group_root, tag)
        if extra:
            figures += _figures(group_root, out, tag, extra, spec, axes, title, prefix, _label(tag))
    order = list(spec.runs)
    lines = [f"## {group}" if group else "## Runs", ""]
    lines += [f"![{f.stem}]({f.name})" for f in figures] + [""]
    lines += [
        f"{spec.label}, per epoch (mean ± std over seeds):",
        "",
        epoch_table(_shown_epochs(data), order, spec.digits),
        "",
    ]
    lines += [
        "Final value (mean ± std over seeds):",
        "",
        final_table(data, label=f"final {spec.label}", digits=spec.digits),
        "",
    ]
    if spec.targets:
        lines += ["Epochs to reach the target (first epoch with value ≤ target):", ""]
        label = spec.label.split(" (")[0]
        lines += [target_table(data, spec.targets, spec.paper_targets, label=label), ""]
    skipped = load_scalars(group_root, SKIPPED_TOTAL_TAG)
    if skipped:
        paper = (
            {run: paper_note(spec.paper_skipped, group, run) for run in skipped}
            if spec.paper_skipped is not None
            else None
        )
        lines += ["Skipped curvature updates (SR1 skip rule / L-BFGS curvature condition), whole fit:", ""]
        lines += [skipped_table(skipped, load_scalars(group_root, SKIPPED_EPOCH_TAG), paper), ""]
    names = sorted(data, key=lambda r: (order.index(r) if r in order else len(order), r))
    table = runs_table(summaries, [f"{group}/{r}" if group else r for r in names], names)
    if table:
        lines += [
            "Per seed: optimizer steps, accepted steps (L-SR1: rho > eta; L-BFGS: a decrease found), wall "
            "time of the fit (evaluation included) and of the training epochs alone:",
            "",
            table,
            "",
        ]
    return lines, data


def build_report(logs: str | Path, out: str | Path | None = None, spec: ReportSpec | None = None) -> str:
    """Write ``<out>/report.md`` and the PNGs for the runs under ``logs``; returns the markdown.

    Args:
        logs: the log root (``<run>/seed_<s>/`` folders below it, see :mod:`lightning_sqn.report.scalars`).
        out: where the report goes (default ``<logs>/report``).
        spec: what to show; default: the recipe's (``<logs>/recipe_config.yaml``) if there is one, else
            :class:`ReportSpec`'s defaults.

    Raises:
        FileNotFoundError: no event files under ``logs``.
        ValueError: no run logged the tag.
    """
    root = Path(logs)
    if spec is None:
        recipe = root / RECIPE_FILE
        spec = (
            ReportSpec.from_recipe(yaml.safe_load(recipe.read_text(encoding="utf-8")))
            if recipe.is_file()
            else ReportSpec()
        )
    load_scalars(root, spec.tag)  # raises FileNotFoundError when there are no logs at all
    out = root / "report" if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summaries = _summaries(root)
    presets = sorted({str(s.get("preset")) for s in summaries if s.get("preset")})
    lines = [
        f"# {spec.title or root.name}",
        "",
        f"Logs: `{root}`" + (f"; preset(s): {', '.join(presets)}." if presets else "."),
        "",
    ]
    per_group: dict[str, Scalars] = {}
    for group in spec.groups:
        panel, data = _panel(spec, root, out, group, summaries)
        lines += panel
        if data:
            per_group[group or ""] = data
    if not per_group:
        raise ValueError(f"no run under {root} logged the scalar {spec.tag!r}")
    if spec.table1:
        columns = {str(g): float(t) for g, t in spec.table1["columns"].items()}
        batch = {
            g: next((s["batch_size"] for s in summaries if str(s["run"]).startswith(f"{g}/")), "?")
            for g in columns
        }
        title = spec.table1.get("title", "Table 1: epochs needed to surpass the target test error")
        lines += [f"## {title}", ""]
        lines += [
            table1(per_group, columns, batch_sizes=batch, paper=spec.table1.get("paper"), order=spec.runs),
            "",
        ]
    text = "\n".join(lines)
    (out / "report.md").write_text(text, encoding="utf-8")
    return text


__all__ = ["EPOCH_COLUMNS", "RECIPE_FILE", "ReportSpec", "build_report", "paper_note"]
