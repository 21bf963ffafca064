"""The data of Martens' and Berahas et al.'s experiments: CURVES regenerated, FACES read from files, the
sin toy problem and its networks; evaluation on the whole training set (``eval_train``)."""

from __future__ import annotations

import math
from functools import partial

import lightning
import numpy as np
import pytest
import torch

import lightning_sqn
from lightning_sqn.problems import (
    CurvesDataModule,
    FacesDataModule,
    ReconstructionTask,
    TensorDataModule,
    ToyDataModule,
    autoencoder,
    make_curves,
    toy_sigmoid_network,
    toy_sin_data,
)
from lightning_sqn.problems.data.synthetic import CURVES_SIDE


def test_curves_pass_through_their_three_control_points() -> None:
    """Redraw the control points from the same seed: the pixel nearest each one is inked (its centre is
    within sqrt(1/2) pixel of a point on the curve), and the stroke is thin."""
    n, seed, width, margin = 50, 7, 0.7, 2.0
    images = make_curves(n, seed, width=width, margin=margin)
    assert images.shape == (n, 1, CURVES_SIDE, CURVES_SIDE) and images.dtype == torch.float32
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    g = torch.Generator().manual_seed(seed)
    points = margin + (CURVES_SIDE - 1 - 2 * margin) * torch.rand(n, 3, 2, generator=g, dtype=torch.float64)
    floor = math.exp(-0.5 / (2 * width**2)) - 1e-6
    for i in range(n):
        for px, py in points[i].tolist():
            assert float(images[i, 0, round(py), round(px)]) >= floor
    inked = (images > 0.5).flatten(1).sum(1).double()
    assert 5 <= float(inked.min()) and float(inked.max()) < 0.25 * CURVES_SIDE**2
    assert torch.equal(images, make_curves(n, seed, width=width, margin=margin))
    assert torch.equal(images, make_curves(n, seed, width=width, margin=margin, chunk=7))  # chunking
    assert not torch.equal(images, make_curves(n, seed + 1, width=width, margin=margin))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(n=0), "n must"),
        (dict(width=0.0), "width"),
        (dict(margin=14.0), "margin"),
        (dict(samples=2), "samples"),
        (dict(chunk=0), "chunk"),
    ],
)
def test_make_curves_rejects_bad_arguments(kwargs, match) -> None:
    args = {"n": 2, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=match):
        make_curves(**args)


def test_curves_datamodule_has_disjoint_seeded_splits() -> None:
    dm = CurvesDataModule(batch_size=8, num_train=16, num_test=8, data_seed=3)
    dm.setup()
    (xtr, ytr), (xte, _) = dm.split("train"), dm.split("test")
    assert xtr.shape == (16, 1, 28, 28) and xte.shape == (8, 1, 28, 28) and (ytr == 0).all()
    assert torch.equal(xtr, make_curves(16, 3)) and torch.equal(xte, make_curves(8, 4))
    with pytest.raises(ValueError, match="num_train"):
        CurvesDataModule(batch_size=8, num_train=0)


def test_faces_datamodule_reads_user_files_and_says_what_is_missing(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="cannot be downloaded"):
        FacesDataModule(tmp_path, batch_size=4).setup()
    (tmp_path / "FACES").mkdir()
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "FACES/train.npz", x=rng.random((6, 625)))
    np.savez(tmp_path / "FACES/test.npz", x=rng.random((3, 25, 25)) * 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        FacesDataModule(tmp_path, batch_size=4).setup()
    np.savez(tmp_path / "FACES/test.npz", x=rng.random((3, 25, 25)))
    dm = FacesDataModule(tmp_path, batch_size=4)
    dm.setup()
    assert dm.split("train")[0].shape == (6, 1, 25, 25) and dm.split("test")[0].shape == (3, 1, 25, 25)
    np.savez(tmp_path / "FACES/test.npz", x=rng.random((3, 24)))
    with pytest.raises(ValueError, match="625 pixels"):
        FacesDataModule(tmp_path, batch_size=4).setup()


def test_sin_data_is_the_authors_definition() -> None:
    X, y = toy_sin_data()
    x = np.arange(50) / 50
    np.testing.assert_array_equal(X[:50, 0].numpy(), x)
    np.testing.assert_allclose(X[:50, 1].numpy(), np.sin(8 * x) + 0.8, rtol=0, atol=1e-15)
    np.testing.assert_allclose(X[50:, 1].numpy(), np.sin(8 * x) - 0.8, rtol=0, atol=1e-15)
    assert y[:50].eq(1).all() and y[50:].eq(0).all() and X.dtype == torch.float64
    with pytest.raises(ValueError, match="offset"):
        toy_sin_data(offset=0.0)


@pytest.mark.parametrize(("size", "d"), [("small", 36), ("medium", 176), ("large", 908)])
def test_authors_initialisation_is_a_truncated_normal_of_scale_one_over_d(size, d) -> None:
    net = toy_sigmoid_network(size, seed=1, init="authors")
    w = torch.cat([p.detach().flatten() for p in net.parameters()])
    assert w.numel() == d and w.dtype == torch.float64
    assert float(w.abs().max()) <= 2.0 / d
    # a normal truncated at 2 sigma has standard deviation 0.88 sigma
    assert 0.6 / d < float(w.std()) < 1.1 / d
    assert torch.equal(
        w,
        torch.cat([p.detach().flatten() for p in toy_sigmoid_network(size, 1, init="authors").parameters()]),
    )
    with pytest.raises(ValueError, match="init"):
        toy_sigmoid_network(size, init="xavier")


def test_toy_datamodule_repeats_the_full_batch() -> None:
    dm = ToyDataModule(steps_per_epoch=3)
    dm.setup()
    X, y = toy_sin_data()
    batches = list(dm.train_dataloader())
    assert len(batches) == 3
    for xb, yb in batches:
        assert torch.equal(xb, X) and torch.equal(yb, y)
    assert torch.equal(dm.split("test")[0], X)
    with pytest.raises(ValueError, match="batch_size"):
        ToyDataModule(batch_size=10)
    with pytest.raises(ValueError, match="problem"):
        ToyDataModule("moons")


def test_eval_train_logs_the_whole_training_set_beside_the_test_set(tmp_path) -> None:
    """With ``eval_train=True`` the validation loop evaluates the test set and then the whole training
    set; the logged ``train_set/...`` values equal a direct computation. Hessian-free's Gauss-Newton
    products watch the task's network (the task calls it once per evaluation)."""
    torch.manual_seed(0)
    x, xt = torch.rand(48, 1, 4, 4), torch.rand(16, 1, 4, 4)
    data = TensorDataModule(
        (x, torch.zeros(48)), (xt, torch.zeros(16)), batch_size=16, eval_batch_size=10, eval_train=True
    )
    make = partial(lightning_sqn.HessianFree, loss="bce_with_logits", max_cg_iters=5)
    task = ReconstructionTask(autoencoder((16, 8, 4), init="sparse", generator_seed=0), optimizer=make)
    trainer = lightning.Trainer(
        max_epochs=2,
        accelerator="cpu",
        strategy="sqn",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(task, datamodule=data)
    assert trainer.optimizers[0].watched_module is task.model
    metrics = trainer.callback_metrics
    with torch.no_grad():
        for prefix, images in (("test", xt), ("train_set", x)):
            logits = task.model(images)
            target = images.flatten(1)
            bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
            squared = (logits.sigmoid() - target).pow(2).sum(1).mean()
            torch.testing.assert_close(metrics[f"{prefix}/loss"], bce, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(metrics[f"{prefix}/squared_error"], squared, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="eval_train"):
        TensorDataModule((x, torch.zeros(48)), batch_size=16, eval_train=True).val_dataloader()
    with pytest.raises(ValueError, match="eval_train"):
        TensorDataModule((x, torch.zeros(48)), batch_size=16, eval_train=1)
