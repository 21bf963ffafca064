"""lightning_sqn.report on event files written here with SummaryWriter: 2 runs x 2 seeds of known scalars."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from torch.utils.tensorboard import SummaryWriter

from lightning_sqn import report

# test/error per epoch (1, 2, 3, 4), per run and seed
ERRORS = {
    "lsr1": {0: [5.0, 2.0, 1.0, 0.8], 1: [4.0, 3.0, 1.4, 1.2]},
    "nag": {0: [9.0, 6.0, 4.0, 3.0], 1: [8.0, 5.0, 3.0, 1.4]},
}
STEPS_PER_EPOCH = 10
SKIPPED_TOTAL = {0: 2.0, 1: 4.0}  # lsr1 only, like SkippedUpdateCounter


def _write_run(log_dir: Path, errors: list[float], skipped: float | None) -> None:
    """What ClassificationTask + Lightning write: per epoch e (0-based) at step 10(e+1) - 1 the tags and
    Lightning's ``epoch`` = e; train/loss at every step; the callbacks' tags at step 10(e+1) without epoch."""
    with SummaryWriter(str(log_dir)) as w:
        for e, err in enumerate(errors):
            for step in range(STEPS_PER_EPOCH * e, STEPS_PER_EPOCH * (e + 1)):
                w.add_scalar("train/loss", 1.0 / (step + 1), step)
                w.add_scalar("epoch", e, step)
            end = STEPS_PER_EPOCH * (e + 1) - 1
            w.add_scalar("test/error", err, end)
            w.add_scalar("train/time", 2.0 * (e + 1), end)
            if skipped is not None:
                w.add_scalar("sqn/skipped_updates_pct", skipped * (e + 1) / 2, end + 1)
                w.add_scalar("sqn/skipped_updates_total_pct", skipped, end + 1)


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("logs")
    for run, seeds in ERRORS.items():
        for seed, errors in seeds.items():
            # lsr1 in our layout, nag in Lightning's default TensorBoardLogger layout (version_<n>)
            name = f"seed_{seed}" if run == "lsr1" else f"version_{seed}"
            _write_run(root / run / name, errors, SKIPPED_TOTAL[seed] if run == "lsr1" else None)
    return root


def test_load_scalars_by_epoch(logs):
    data = report.load_scalars(logs, "test/error")
    assert set(data) == {"lsr1", "nag"} and set(data["lsr1"]) == set(data["nag"]) == {0, 1}
    for run, seeds in ERRORS.items():
        for seed, errors in seeds.items():
            x, v = data[run][seed]
            np.testing.assert_array_equal(x, [1, 2, 3, 4])
            np.testing.assert_allclose(v, errors, rtol=1e-6)
    steps = report.load_scalars(logs, "test/error", x="step")
    np.testing.assert_array_equal(steps["nag"][1][0], [9, 19, 29, 39])
    # tags written without Lightning's epoch alongside are numbered by order
    skipped = report.load_scalars(logs, report.SKIPPED_EPOCH_TAG)
    assert set(skipped) == {"lsr1"}
    np.testing.assert_array_equal(skipped["lsr1"][0][0], [1, 2, 3, 4])
    assert report.load_scalars(logs, "no/such/tag") == {}


def test_aggregate_mean_and_sample_std(logs):
    curve = report.aggregate(report.load_scalars(logs, "test/error")["nag"])
    a = np.array([ERRORS["nag"][0], ERRORS["nag"][1]])
    np.testing.assert_array_equal(curve.x, [1, 2, 3, 4])
    np.testing.assert_allclose(curve.mean, a.mean(0), rtol=1e-6)
    np.testing.assert_allclose(curve.std, a.std(0, ddof=1), rtol=1e-6)
    np.testing.assert_array_equal(curve.count, [2, 2, 2, 2])


def test_epochs_to_target(logs):
    data = report.load_scalars(logs, "test/error")
    assert report.epochs_to_target(data, 1.5) == {"lsr1": {0: 3, 1: 3}, "nag": {0: None, 1: 4}}
    assert report.epochs_to_target(data, 5.0) == {"lsr1": {0: 1, 1: 1}, "nag": {0: 3, 1: 2}}
    assert report.epochs_to_target(data, 1.4) == {"lsr1": {0: 3, 1: 3}, "nag": {0: None, 1: 4}}
    # exactly on the target counts as reached, although TensorBoard stores 1.2 as 1.20000005
    assert report.epochs_to_target(data, 1.2)["lsr1"] == {0: 3, 1: 4}
    assert report.epochs_to_target(data, 0.5) == {"lsr1": {0: None, 1: None}, "nag": {0: None, 1: None}}


def test_markdown_tables(logs):
    data = report.load_scalars(logs, "test/error")
    assert report.final_table(data) == (
        "| run | seeds | final test error (%) |\n"
        "|---|---|---|\n"
        "| lsr1 | 2 | 1.00 ± 0.28 |\n"
        "| nag | 2 | 2.20 ± 1.13 |"
    )
    paper = {"lsr1": {"1.5": 5}, "nag": {"5": 35}}
    assert report.target_table(data, [1.5, 5.0], paper) == (
        "| run | epochs to test error ≤ 1.5 | paper | epochs to test error ≤ 5 | paper |\n"
        "|---|---|---|---|---|\n"
        "| lsr1 | 3.0 ± 0.0 | 5 | 1.0 ± 0.0 |  |\n"
        "| nag | 4.0 (1/2 seeds) |  | 2.5 ± 0.7 | 35 |"
    )
    assert "not reached" in report.target_table(data, [0.5])
    skipped = report.skipped_table(
        report.load_scalars(logs, report.SKIPPED_TOTAL_TAG),
        report.load_scalars(logs, report.SKIPPED_EPOCH_TAG),
    )
    assert skipped == (
        "| run | seeds | skipped updates (%) | max per epoch (%) |\n"
        "|---|---|---|---|\n"
        "| lsr1 | 2 | 3.00 ± 1.41 | 8.00 |"
    )
    assert report.markdown_table(["a|b"], [[1]]) == "| a\\|b |\n|---|\n| 1 |"
    # losses need more decimals than errors in percent: a recipe's report.digits
    assert report.final_table(data, digits=4).endswith("| nag | 2 | 2.2000 ± 1.1314 |")
    assert "| lsr1 | 2 | 1.0000 ± 0.2828 |" in report.final_table(data, digits=4)
    cells = report.epoch_table(data, digits=3).splitlines()[2].split(" | ")[2:]
    assert cells and all(len(c.split(" ± ")[0].split(".")[1]) == 3 for c in cells if c.strip(" |"))
    assert report.ReportSpec.from_recipe({"report": {"digits": 4}}).digits == 4
    # the paper's column is data: a value per run, "–" where the paper says nothing
    with_paper = report.skipped_table(
        report.load_scalars(logs, report.SKIPPED_TOTAL_TAG), paper={"lsr1": "7% to > 60%"}
    )
    assert with_paper.splitlines()[0] == "| run | seeds | skipped updates (%) | paper |"
    assert with_paper.splitlines()[2] == "| lsr1 | 2 | 3.00 ± 1.41 | 7% to > 60% |"
    assert report.skipped_table(report.load_scalars(logs, report.SKIPPED_TOTAL_TAG), paper={}).endswith(
        "| – |"
    )


def test_plot_curves_writes_a_png(logs, tmp_path):
    data = report.load_scalars(logs, "test/error")
    path = report.plot_curves(data, tmp_path / "sub" / "curves.png", title="t")
    timed = report.plot_curves(data, tmp_path / "time.png", times=report.load_scalars(logs, report.TIME_TAG))
    for p in (path, timed):
        assert p.stat().st_size > 1000
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_main_writes_report_and_figures(logs, tmp_path, capsys):
    out = tmp_path / "out"
    assert report.main([str(logs), "--out", str(out), "--targets", "1.5"]) == 0
    text = (out / "report.md").read_text(encoding="utf-8")
    assert capsys.readouterr().out == text + "\n"
    assert "| lsr1 | 3.0 ± 0.0 |" in text and "| nag | 4.0 (1/2 seeds) |" in text
    assert "| lsr1 | 2 | 3.00 ± 1.41 | 8.00 |" in text
    for name in ("test_error_epoch.png", "test_error_time.png"):
        assert (out / name).stat().st_size > 1000 and f"({name})" in text


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no TensorBoard event files"):
        report.load_scalars(tmp_path, "test/error")
    with pytest.raises(ValueError, match="x must be"):
        report.load_scalars(tmp_path, "test/error", x="time")
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "missing"), "--out", str(tmp_path / "out")])


def test_format_mean_std_shows_the_spread_only_over_several_seeds() -> None:
    from lightning_sqn.report import format_mean_std

    assert format_mean_std([2.5]) == "2.50"
    assert format_mean_std([1.0, 3.0], 1) == "2.0 ± 1.4"  # sample std (ddof=1): sqrt(2)


def test_a_recipe_log_root_gets_the_recipes_report(logs, tmp_path, capsys):
    """With ``recipe_config.yaml`` at the log root, the report has the recipe's title, row order, targets,
    the paper's skipped-update values and Table 1, without flags; flags replace the recipe's values."""
    import shutil

    import yaml

    root = tmp_path / "recipe"
    shutil.copytree(logs, root)
    recipe = {
        "name": "paper/experiment",
        "runs": {"nag": {}, "lsr1": {}},
        "report": {
            "title": "Figure 9",
            "targets": [1.5],
            "paper_skipped": {"lsr1": "7%"},
            "table1": {"columns": {"": 1.5}, "paper": {"lsr1": [5], "nag": [None]}},
        },
    }
    (root / report.RECIPE_FILE).write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    assert report.main([str(root)]) == 0
    text = (root / "report" / "report.md").read_text(encoding="utf-8")
    assert text.startswith("# Figure 9")
    per_epoch = text[text.index("per epoch") :]
    assert per_epoch.index("| nag |") < per_epoch.index("| lsr1 |")  # the recipe's order
    assert "| lsr1 | 2 | 3.00 ± 1.41 | 8.00 | 7% |" in text
    assert "| nag | 4.0 (1/2 seeds) | – |\n| lsr1 | 3.0 ± 0.0 | 5 |" in text  # Table 1, in the recipe's order
    capsys.readouterr()
    assert report.main([str(root), "--targets", "5", "--out", str(tmp_path / "flags")]) == 0
    assert "epochs to test error ≤ 5 |" in (tmp_path / "flags" / "report.md").read_text(encoding="utf-8")


def test_long_runs_show_a_selection_of_epochs(tmp_path) -> None:
    import numpy as np

    from lightning_sqn.report.builder import _shown_epochs

    xs = np.arange(1, 201)
    shown = _shown_epochs({"run": {0: (xs, xs * 0.5)}})["run"][0]
    assert shown[0].tolist() == [1, 2, 3, 5, 10, 15, 20, 30, 50, 80, 100, 120, 150, 200]
    assert shown[1].tolist() == (shown[0] * 0.5).tolist()
    short = {"run": {0: (xs[:12], xs[:12])}}
    assert _shown_epochs(short) is short


def test_against_reindexes_by_the_latest_count_at_or_before_each_step() -> None:
    import numpy as np

    data = {"run": {0: (np.array([3, 7, 9]), np.array([1.0, 2.0, 3.0])), 1: (np.array([5]), np.array([4.0]))}}
    counts = {"run": {0: (np.array([4, 5, 6, 7, 8]), np.array([10, 20, 30, 40, 50]))}}
    out = report.against(data, counts)
    # step 3 precedes every count (left out); 7 -> 40 (same step); 9 -> 50 (latest before);
    # seed 1 has no counts
    assert list(out) == ["run"] and list(out["run"]) == [0]
    xs, values = out["run"][0]
    assert xs.tolist() == [40, 50] and values.tolist() == [2.0, 3.0]
    with pytest.raises(ValueError, match="unknown axis"):
        report.ReportSpec(x=("epoch", "steps"))
