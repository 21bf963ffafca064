"""Every recipe's smoke preset trains end to end in one process on fake data, logs what the report needs,
and the report step turns the logs into PNG figures and the markdown tables (Table 1 included)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from recipe_helpers import RECIPES, load_runner

from lightning_sqn.recipes import (
    RunSpec,
    all_configs,
    config_name,
    expand,
    find_configs,
    fit_one,
    load_config,
    monitors,
    needs_closure,
    optimizer_of,
)
from lightning_sqn.report import load_scalars

RUNNER = load_runner()
NAMES = [config_name(p, RECIPES) for p in all_configs(RECIPES)]
FIG1 = "lsr1_ramamurthy2017/fig1_mnist_lenet"
TABLE1 = "lsr1_ramamurthy2017/table1_batch_size/mnist"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, fake_data):
    """``smoke(name)``: the log root after ``fit name --preset smoke`` (each config trained once)."""
    out = tmp_path_factory.mktemp("runs")
    done: set[str] = set()

    def run(name: str) -> Path:
        if name not in done:
            argv = ["fit", name, "--preset", "smoke", "--data-dir", str(fake_data), "--out", str(out)]
            assert RUNNER.main([*argv, "--no-progress-bar"]) == 0
            done.add(name)
        return out

    return run


@pytest.mark.parametrize("name", NAMES)
def test_smoke_preset_runs_end_to_end(smoke, name) -> None:
    out = smoke(name)
    config = load_config(find_configs(name, RECIPES)[0], RECIPES, "smoke")
    specs = expand(config)
    tag = (config.get("report") or {}).get("tag", "test/error")
    values_of = load_scalars(out / name, tag)
    backprops = load_scalars(out / name, "train/backprops", x="step")
    for spec in specs:
        seed_dir = out / name / spec.name / "seed_0"
        summary = json.loads((seed_dir / "summary.json").read_text())
        assert summary["preset"] == "smoke" and summary["epochs"] == 2
        data_args = spec.settings["data"]["init_args"]
        assert summary["batch_size"] == data_args.get("batch_size", 100)  # the toy problem: 100 points
        assert (seed_dir / "recipe.yaml").is_file()
        epochs, values = values_of[spec.name][0]
        assert epochs.tolist() == [1, 2] and np.isfinite(values).all()
        if tag == "test/error":
            assert ((0 <= values) & (values <= 100)).all()
        counts = backprops[spec.name][0][1]
        assert len(counts) == summary["global_steps"] and (np.diff(counts) > 0).all()
        if needs_closure(optimizer_of(spec.settings)):
            assert summary["counters"]["steps"] == summary["global_steps"] > 0
            c = summary["counters"]
            assert counts[-1] == c["closure_evals"] - c["loss_only_evals"] + c["curvature_products"]
            # trust-region Newton's trial point is a forward pass (one per step), and so are Hessian-free's
            # backtracking and Armijo trials (every evaluation but the gradient's); L-SR1's is a gradient
            kind = optimizer_of(spec.settings)["class_path"]
            if kind == "lightning_sqn.TrustRegionNewton":
                assert c["loss_only_evals"] == c["steps"]
            elif kind == "lightning_sqn.HessianFree":
                assert c["loss_only_evals"] == c["closure_evals"] - c["steps"] > 0
            else:
                assert c["loss_only_evals"] == 0
        else:
            assert counts.tolist() == list(range(1, summary["global_steps"] + 1))  # one per batch
    keeping = [s.name for s in specs if "SkippedUpdateCounter" in monitors(optimizer_of(s.settings))]
    skipped = load_scalars(out / name, "sqn/skipped_updates_total_pct")
    assert sorted(skipped) == sorted(keeping)
    for spec in specs:
        if spec.name in keeping:
            assert (
                0.0
                <= json.loads((out / name / spec.name / "seed_0/summary.json").read_text())[
                    "skipped_updates_pct"
                ]
                <= 100
            )
    # L-BFGS, BFGS, S-LBFGS: a line search (the recipes use SR1 and L-SR1 in their trust-region form)
    trust_region = (
        "lightning_sqn.LSR1",
        "lightning_sqn.SR1",
        "lightning_sqn.SampledLSR1",
        "lightning_sqn.TrustRegionNewton",
    )
    radius = [s.name for s in specs if optimizer_of(s.settings)["class_path"] in trust_region]
    assert sorted(load_scalars(out / name, "sqn/radius")) == sorted(radius)


def _png(path: Path) -> None:
    assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC, path


def test_report_of_a_figure_recipe(smoke, capsys) -> None:
    out = smoke(FIG1)
    assert RUNNER.main(["report", "fig1_mnist_lenet", "--out", str(out)]) == 0
    report_dir = out / FIG1 / "report"
    for group in ("no_bn", "bn"):
        _png(report_dir / f"{group}_test_error_epoch.png")
    text = (report_dir / "report.md").read_text()
    assert text in capsys.readouterr().out  # printed too
    assert "## bn" in text and "## no_bn" in text and "preset(s): smoke" in text
    assert "| run | seeds | 1 | 2 |" in text  # test error per epoch
    assert "epochs to test error ≤ 1.1" in text
    # skipped updates of L-SR1 and L-BFGS with the paper's figures next to them, in their own column
    assert "| skipped updates (%) | max per epoch (%) | paper |" in text
    assert "| 7% to > 60% (MNIST with BN) |" in text and "| < 2.5% (most cases) |" in text
    # the same report from the logs alone (the recipe is kept at the log root)
    capsys.readouterr()
    from lightning_sqn.report import main as report_main

    assert report_main([str(out / FIG1), "--out", str(out / "again")]) == 0
    assert (out / "again" / "report.md").read_text() == text


def test_report_of_an_autoencoder_recipe_draws_reconstructions(smoke, fake_data, capsys) -> None:
    name = "ellipsoidal_tr_kohler2019/fig3_tr_norms/fashion_autoencoder"
    out = smoke(name)
    for run in ("tr_uniform", "tr_adagrad", "tr_rmsprop"):
        assert (out / name / run / "seed_0" / "final_weights.pt").is_file()
    assert RUNNER.main(["report", name, "--out", str(out)]) == 0
    assert "Not drawn: pass --data-dir" in (out / name / "report" / "report.md").read_text()
    assert RUNNER.main(["report", name, "--out", str(out), "--data-dir", str(fake_data)]) == 0
    capsys.readouterr()
    _png(out / name / "report" / "reconstructions.png")
    text = (out / name / "report" / "report.md").read_text()
    assert "The first 10 test images" in text and "![reconstructions](reconstructions.png)" in text
    # the grid is drawn from the saved weights: the run rebuilt from them has the test squared error
    # that the fit logged at its end
    from lightning_sqn.recipes.reconstructions import load_trained, trained_runs

    runs = trained_runs(out / name, ("tr_uniform", "tr_adagrad", "tr_rmsprop"))
    assert list(runs) == ["tr_uniform", "tr_adagrad", "tr_rmsprop"]
    logged = load_scalars(out / name, "test/squared_error")
    for run, folder in runs.items():
        task, datamodule = load_trained(folder, fake_data)
        x = datamodule.split("test")[0].float()
        with torch.no_grad():
            logits = task(x).flatten(1)
        error = task.squared_error(logits, x.flatten(1)).mean()
        assert float(error) == pytest.approx(float(logged[run][0][1][-1]), rel=1e-5)


def test_report_writes_table1_and_wall_time_plots(smoke) -> None:
    from lightning_sqn.report import build_report

    out = smoke(TABLE1)
    text = build_report(out / TABLE1)
    assert "Table 1 (MNIST with BN)" in text
    assert (
        "| optimizer | ≤ 1.1% @ batch 16 | paper | ≤ 1.2% @ batch 32 | paper | ≤ 1.5% @ batch 64 | paper |"
        in text
    )
    assert "| nag | not reached in 2 | 35 | not reached in 2 | 37 | not reached in 2 | 194 |" in text
    assert "| adam | not reached in 2 | – |" in text
    for group in ("b500", "b1000", "b10000"):
        _png(out / TABLE1 / "report" / f"{group}_test_error_epoch.png")
    fig5 = "lsr1_ramamurthy2017/fig5_resnet20"
    out = smoke(fig5)
    build_report(out / fig5)
    _png(out / fig5 / "report/test_error_epoch.png")
    _png(out / fig5 / "report/test_error_time.png")


def test_skip_existing_leaves_finished_runs_alone(smoke, fake_data, capsys) -> None:
    out = smoke("lsr1_ramamurthy2017/fig6_sweeps/memory")
    summary = out / "lsr1_ramamurthy2017/fig6_sweeps/memory/m2/seed_0/summary.json"
    before = summary.read_text()
    argv = ["fit", "fig6_sweeps/memory", "--preset", "smoke", "--data-dir", str(fake_data), "--out", str(out)]
    assert RUNNER.main([*argv, "--skip-existing", "--no-progress-bar"]) == 0
    assert capsys.readouterr().out.count("done already, skipped") == 3
    assert summary.read_text() == before


def test_saved_lightning_cli_config_repeats_the_run(smoke, tmp_path) -> None:
    """Every run leaves ``config.yaml`` (LightningCLI's format); ``lightning-sqn fit --config`` on it, with
    the logs sent elsewhere, trains the same run again: the same test error and training loss curves."""
    import yaml

    from lightning_sqn.cli import main as lightning_sqn_main

    out = smoke(FIG1)
    seed_dir = out / FIG1 / "no_bn" / "lsr1" / "seed_0"
    saved = yaml.safe_load((seed_dir / "config.yaml").read_text())
    assert saved["model"]["init_args"]["optimizer"]["class_path"] == "lightning_sqn.LSR1"
    assert (
        saved["model"]["init_args"]["optimizer"]["init_args"]["gamma"] == 0.1
        and saved["trainer"]["strategy"] == "sqn"
    )
    assert saved["model"]["init_args"]["model"]["class_path"] == "lightning_sqn.problems.lenet5_mnist"
    assert saved["data"]["class_path"] == "lightning_sqn.problems.MNISTDataModule"
    argv = ["fit", "--config", str(seed_dir / "config.yaml")]
    argv += ["--trainer.logger.init_args.save_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]
    assert lightning_sqn_main(argv) == 0
    again = tmp_path / "no_bn" / "lsr1"
    assert (again / "seed_0" / "config.yaml").is_file()
    for tag in ("test/error", "train/loss"):
        first_steps, first = load_scalars(out / FIG1 / "no_bn", tag)["lsr1"][0]
        steps, values = load_scalars(tmp_path / "no_bn", tag)["lsr1"][0]
        assert steps.tolist() == first_steps.tolist() and len(values) > 0
        assert values.tolist() == pytest.approx(first.tolist(), rel=1e-6), tag


def test_stop_below_ends_the_run_at_the_first_epoch_under_the_threshold(tmp_path, fake_data) -> None:
    # every test error is <= 100%, so a threshold of 100.5 stops after the first evaluation; the smoke
    # preset would otherwise train 2 epochs
    config = load_config(find_configs(FIG1, RECIPES)[0], RECIPES, "smoke")
    spec = next(s for s in expand(config) if s.name == "no_bn/nag")
    spec = RunSpec(spec.config, spec.group, spec.run, {**spec.settings, "stop_below": 100.5})
    summary = fit_one(spec, 0, out=tmp_path, preset="smoke", data_dir=fake_data)
    assert summary["epochs"] == 1
    epochs, _ = load_scalars(tmp_path / FIG1, "test/error")["no_bn/nag"][0]
    assert epochs.tolist() == [1]


def test_report_of_hessian_free_draws_iterations_and_curvature_products(smoke, fake_data, capsys) -> None:
    """The autoencoder report: the test and training-set squared errors against HF iterations (optimizer
    steps), curvature products, epochs and seconds, the damping and CG logs in TensorBoard, and the
    reconstruction grid from the saved weights."""
    name = "hessian_free_martens2010/autoencoders/mnist"
    out = smoke(name)
    assert RUNNER.main(["report", name, "--out", str(out), "--data-dir", str(fake_data)]) == 0
    report_dir = out / name / "report"
    for tag in ("test_squared_error", "train_set_squared_error"):
        for axis in ("step", "curvature_products", "epoch", "time"):
            _png(report_dir / f"{tag}_{axis}.png")
    steps, products = load_scalars(out / name, "train/curvature_products", x="step")["hf"][0]
    assert steps.tolist() == [0, 1, 2, 3] and (np.diff(products) > 0).all()
    for tag in ("sqn/damping", "sqn/cg_iterations", "sqn/cg_reason"):
        assert len(load_scalars(out / name, tag, x="step")["hf"][0][1]) == 4, tag
    assert list(report_dir.glob("*reconstructions*.png"))
    capsys.readouterr()


def test_report_draws_generated_data_reconstructions_without_data_dir(smoke, capsys) -> None:
    """CURVES is generated, so its reconstruction grid needs no ``--data-dir``; MNIST's does."""
    name = "hessian_free_martens2010/autoencoders/curves"
    out = smoke(name)
    assert RUNNER.main(["report", name, "--out", str(out)]) == 0
    _png(out / name / "report" / "reconstructions.png")
    assert "Not drawn" not in capsys.readouterr().out
