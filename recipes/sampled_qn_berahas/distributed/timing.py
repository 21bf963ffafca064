"""The poster's "Distributed Computing" panel, measured with ``ddp_sqn``: seconds per S-LSR1 iteration
against the number of processes, at a fixed global batch.

The poster times one S-LSR1 iteration on 1M images with 1, 2, 4, ... MPI processes (and one epoch of SG).
Here each point is one launch of the MNIST recipe (``sampled_qn_berahas/mnist/mnist``, our design) with
``python recipes/run.py fit ... --devices N`` (Lightning starts N processes; ``ddp_sqn`` for S-LSR1,
Lightning's ``ddp`` for Adam), the same global batch split over the N ranks, ``--steps`` iterations per
epoch for 2 epochs; the time per iteration is the *second* epoch's training time (``train/epoch_time``,
the slowest rank) over its iterations, so start-up and the first step's allocations are left out.

    python recipes/sampled_qn_berahas/distributed/timing.py --data-dir DATA --out OUT
    python recipes/sampled_qn_berahas/distributed/timing.py --data-dir DATA --out OUT \
        --processes 1 2 4 8 --accelerator gpu --threads 4

On a CPU every process gets ``--threads`` intra-op threads (default 1): with 2 cores, 1 and 2 processes
measure the split of the work and its all-reduce cost over gloo, and 4 processes oversubscribe the cores,
so their time shows the contention, not a speed-up. Writes ``OUT/timing.md`` and ``OUT/timing.png``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from lightning_sqn.report import load_scalars

RUN_PY = Path(__file__).resolve().parents[2] / "run.py"
CONFIG = "sampled_qn_berahas/mnist/mnist"
RUNS = {"slsr1": "S-LSR1 (Option II)", "adam": "Adam (first-order reference)"}


def measure(run: str, processes: int, args: argparse.Namespace) -> float:
    """Seconds per iteration of ``run`` with ``processes`` ranks (see the module docstring)."""
    out = args.out / f"p{processes}"
    argv = [sys.executable, str(RUN_PY), "fit", CONFIG, "--preset", "cpu", "--seeds", "0", "--runs", run]
    argv += ["--data-dir", str(args.data_dir), "--out", str(out), "--devices", str(processes)]
    argv += ["--accelerator", args.accelerator, "--no-progress-bar"]
    argv += ["--trainer.max_epochs=2", f"--trainer.limit_train_batches={args.steps}"]
    argv += [f"--data.init_args.batch_size={args.batch}", "--trainer.limit_val_batches=0"]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONWARNINGS": "ignore"}
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        env.pop(key, None)
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    epochs, times = load_scalars(out / CONFIG, "train/epoch_time")[run][0]
    return float(times[list(epochs).index(2)]) / args.steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="holds MNIST/raw")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--batch", type=int, default=4000, help="global batch (default 4000)")
    parser.add_argument("--steps", type=int, default=5, help="iterations per epoch (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process (default 1)")
    parser.add_argument("--accelerator", default="cpu")
    args = parser.parse_args(argv)
    if args.steps < 2:  # LightningCLI reads limit_train_batches=1 as the fraction 1.0 (the whole epoch)
        parser.error("--steps must be >= 2")
    bad = [p for p in args.processes if p < 1 or args.batch % p]
    if bad:
        parser.error(f"--processes {bad}: each must be >= 1 and divide --batch {args.batch}")
    rows = {run: {p: measure(run, p, args) for p in args.processes} for run in RUNS}
    lines = [
        f"Seconds per iteration, global batch {args.batch}, {args.threads} thread(s) per process, "
        f"{args.accelerator} ({os.cpu_count()} logical CPUs):",
        "",
        "| method | " + " | ".join(f"{p} process{'es' if p > 1 else ''}" for p in args.processes) + " |",
        "|---|" + "---:|" * len(args.processes),
    ]
    for run, label in RUNS.items():
        lines.append(f"| {label} | " + " | ".join(f"{rows[run][p]:.3f}" for p in args.processes) + " |")
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "timing.md").write_text(text, encoding="utf-8")
    print(text)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for run, label in RUNS.items():
        ax.plot(args.processes, [rows[run][p] for p in args.processes], "o-", label=label)
    ax.set_xlabel("processes (ddp_sqn / ddp, gloo)" if args.accelerator == "cpu" else "processes")
    ax.set_ylabel("seconds per iteration")
    ax.set_xticks(args.processes)
    ax.set_title(f"MLP on MNIST, global batch {args.batch}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.out / "timing.png", dpi=110)
    plt.close(fig)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
