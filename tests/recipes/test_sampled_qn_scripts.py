"""The sampled quasi-Newton paper's scripts: the toy study runs ``toy.yaml``'s settings (the same losses as
the Lightning recipe, iteration by iteration) and summarises them; the eigenvalue study's matrices and
measures against independent constructions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from recipe_helpers import RECIPES, load_runner, load_script

from lightning_sqn.report import load_scalars

TOY = "sampled_qn_berahas/toy_sin/toy"


@pytest.fixture(scope="module")
def study():
    return load_script(RECIPES / "sampled_qn_berahas/toy_sin/toy_study.py", "recipes_toy_study")


@pytest.fixture(scope="module")
def eig():
    return load_script(RECIPES / "sampled_qn_berahas/eigenvalues/eigenvalues.py", "recipes_eigenvalues")


def test_toy_study_trains_the_recipes_runs(study, tmp_path) -> None:
    """Smoke preset (4 iterations), the small network: one JSON per run and seed, the table and figures;
    S-LSR1's and GD's losses equal the Lightning recipe's ``train/loss`` at every iteration, and the
    backpropagations are the optimizer's counters."""
    runs = ["small/gd_lr1", "small/slsr1_II", "small/bfgs"]
    assert study.main(["--out", str(tmp_path), "--preset", "smoke", "--runs", *runs]) == 0
    results = {r: json.loads((tmp_path / r / "seed_0.json").read_text()) for r in runs}
    for r in results.values():
        assert len(r["loss"]) == len(r["accuracy"]) == len(r["backprops"]) == 5  # x_0 .. x_4
        assert r["d"] == 36 and np.diff(r["seconds"]).min() > 0
    assert results["small/gd_lr1"]["backprops"] == [0, 1, 2, 3, 4]
    slsr1 = results["small/slsr1_II"]
    c = slsr1["counters"]
    assert slsr1["backprops"][-1] == c["closure_evals"] - c["loss_only_evals"] + c["curvature_products"] > 4
    text = (tmp_path / "toy_study.md").read_text()
    assert text.count("| small (36) |") == 3
    assert (tmp_path / "toy_small_iterations.png").is_file() and (
        tmp_path / "toy_small_backprops.png"
    ).is_file()

    runner = load_runner()
    argv = ["fit", TOY, "--preset", "smoke", "--out", str(tmp_path / "lightning"), "--no-progress-bar"]
    argv += ["--accelerator", "cpu", "--runs", "small/gd_lr1", "small/slsr1_II"]
    assert runner.main(argv) == 0
    logged = load_scalars(tmp_path / "lightning" / TOY / "small", "train/loss", x="step")
    for run in ("gd_lr1", "slsr1_II"):  # TensorBoard stores float32
        np.testing.assert_allclose(logged[run][0][1], results[f"small/{run}"]["loss"][:4], rtol=1e-7, atol=0)


def test_eigenvalue_study_matrices_and_measures(eig, tmp_path) -> None:
    """The run, the points and the table; the measures vanish for H itself; S-LSR1's matrix from
    y = H sigma with B_0 = gamma I agrees with H on the sampled directions (B S = H S, the secant equations);
    the dense SR1 matrix of the iterate pairs satisfies the newest stored pair's secant equation."""
    assert eig.main(["--sizes", "small", "--iters", "30", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "eigenvalues.md").read_text()
    assert text.count("| small (36) |") == 12 and (tmp_path / "eigenvalues_small.png").is_file()

    torch.set_default_dtype(torch.float64)
    try:
        model, xs, gs, fs, accs = eig.trajectory("small", 0, 30)
        points = eig.points(fs, accs)
        assert points["A"] == 1 and points["A"] <= points["B"] <= points["C"] <= 30
        X, y = eig.toy_sin_data()
        f = eig.flat_loss(model, X, y)
        k = points["C"]
        mats = eig.matrices_at(k, f, xs, gs, torch.Generator().manual_seed(1))
        H = mats["true Hessian"]
        torch.testing.assert_close(H, torch.func.hessian(f)(xs[k]), rtol=1e-10, atol=1e-12)
        e = torch.linalg.eigvalsh(H)
        zero = eig.measures(H, H, e, e)
        assert zero["frobenius"] == 0.0 and zero["top"] == 0.0
        # the sampled matrix reproduces H on its own directions (the secant equations B sigma_i = H sigma_i)
        g = torch.Generator().manual_seed(1)
        sigma = torch.randn(36, dtype=torch.float64, generator=g)
        torch.testing.assert_close(mats["S-LSR1"] @ sigma, H @ sigma, rtol=1e-6, atol=1e-8)
        # SR1's B satisfies the newest accepted pair's secant equation B s = y (when that pair was stored)
        pairs = [
            (xs[j + 1] - xs[j], gs[j + 1] - gs[j]) for j in range(k) if float((xs[j + 1] - xs[j]).norm()) > 0
        ]
        s, yv = pairs[-1]
        assert float((mats["SR1"] @ s - yv).norm()) <= 1e-6 * float(yv.norm()) + 1e-12
    finally:
        torch.set_default_dtype(torch.float32)


def test_distributed_timing_launches_one_and_two_processes(fake_data, tmp_path) -> None:
    """The timing script: one launch per process count and method (S-LSR1 under ddp_sqn, Adam under
    ddp), the second epoch's time per iteration in the table and the figure."""
    timing = load_script(RECIPES / "sampled_qn_berahas/distributed/timing.py", "recipes_timing")
    argv = ["--data-dir", str(fake_data), "--out", str(tmp_path), "--processes", "1", "2"]
    assert timing.main([*argv, "--steps", "2", "--batch", "16"]) == 0
    for p, world in ((1, 1), (2, 2)):
        for run in ("slsr1", "adam"):
            summary = json.loads(
                (tmp_path / f"p{p}/sampled_qn_berahas/mnist/mnist/{run}/seed_0/summary.json").read_text()
            )
            assert summary["world_size"] == world and summary["global_steps"] == 4  # 2 epochs x 2 steps
    text = (tmp_path / "timing.md").read_text()
    assert "| S-LSR1 (Option II) |" in text and "| 1 process | 2 processes |" in text
    assert (tmp_path / "timing.png").is_file()
    with pytest.raises(SystemExit):
        timing.main([*argv, "--batch", "33"])  # 2 does not divide 33
