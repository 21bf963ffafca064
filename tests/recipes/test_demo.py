"""``lightning-sqn demo`` at a reduced size: three runs, a printed table, a PNG and TensorBoard logs."""

from __future__ import annotations

from pathlib import Path

from lightning_sqn import cli


def test_demo_runs_at_reduced_size(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--fast", "--epochs", "1", "--seeds", "0", "1", "--out", str(out), "--no-progress-bar"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "test error (%) after each epoch, mean ± std over seeds 0, 1" in printed
    assert "lsr1" in printed and "nag" in printed and "lbfgs" in printed
    assert f"tensorboard --logdir {out}" in printed
    assert (out / "test_error_epoch.png").read_bytes()[:4] == b"\x89PNG"
    for run in ("lsr1", "nag", "lbfgs"):
        for seed in (0, 1):
            assert list((out / run / f"seed_{seed}").glob("events.out.tfevents*"))
    # `lightning-sqn report` hands its arguments to `python -m lightning_sqn.report`
    assert cli.main(["report", str(out), "--out", str(tmp_path / "report")]) == 0
    assert "| lsr1 | 2 |" in (tmp_path / "report" / "report.md").read_text()


def test_format_results_and_entry_point() -> None:
    results = [
        cli.DemoResult(
            "lsr1",
            "L-SR1",
            {0: [50.0, 10.0], 1: [40.0, 12.0]},
            1.0,
            8,
            {"steps": 8, "accepted_steps": 6, "closure_evals": 16, "stored_pairs": 7, "skipped_pairs": 1},
        ),
        cli.DemoResult("nag", "NAG", {0: [40.0, 20.0], 1: [30.0, 20.0]}, 0.5, 32),
    ]
    text = cli.format_results(results)
    assert "mean ± std over seeds 0, 1" in text
    assert "    2   11.00 ± 1.41   20.00 ± 0.00" in text
    assert "75.0%" in text and "12.5%" in text
    one = cli.format_results([cli.DemoResult("nag", "NAG", {3: [40.0, 20.0]}, 0.5, 32)])
    assert "seed 3" in one and "    2    20.00" in one
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert '[project.scripts]\nlightning-sqn = "lightning_sqn.cli:main"' in pyproject
