"""Curves of the reports: the mean over seeds with a ± std band, against epochs or training time."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lightning_sqn.report.scalars import Curve, Scalars, aggregate


def plot_curves(
    data: Scalars,
    path: str | Path,
    *,
    times: Scalars | None = None,
    ylabel: str = "test error (%)",
    title: str | None = None,
    logy: bool = False,
    xlabel: str | None = None,
) -> Path:
    """One line per run (the mean over seeds) with a shaded ± std band, saved as a PNG.

    Args:
        data: :func:`load_scalars` output with ``x="epoch"``.
        path: the PNG to write (parent directories are created).
        times: ``load_scalars(root, "train/time")`` (x="epoch"): plot against the mean cumulative
            training wall time at each epoch instead of the epoch.
        ylabel, title: axis label and title.
        logy: logarithmic y-axis.
        xlabel: the x-axis label (default: "epoch", or the wall time's with ``times``).

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(fig)  # Agg without pyplot: no global backend state, no display needed
    ax = fig.add_subplot()
    if len(data) > 10:  # more runs than the default cycle's colours: each its own colour, and dashes
        import matplotlib as mpl
        from cycler import cycler

        colours = mpl.colormaps["tab20"].colors[: len(data)]
        dashes = ["-" if i % 2 == 0 else "--" for i in range(len(colours))]
        ax.set_prop_cycle(cycler(color=colours) + cycler(linestyle=dashes))
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
    ax.set_xlabel(xlabel or ("training wall time (s)" if times is not None else "epoch"))
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        import textwrap

        ax.set_title("\n".join(textwrap.wrap(title, 60)), fontsize="medium")
    ax.grid(alpha=0.3)
    if ax.lines:
        ax.legend(fontsize="small")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
