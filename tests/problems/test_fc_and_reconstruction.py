"""The fully connected and convolutional networks of the ellipsoidal trust-region and Hessian-free papers,
the reconstruction task of the autoencoders, and the backpropagation count every task logs."""

from __future__ import annotations

import itertools
import math
from functools import partial

import lightning
import pytest
import torch
from torch import nn

import lightning_sqn  # noqa: F401  (registers strategy="sqn")
from lightning_sqn import TrustRegionNewton
from lightning_sqn.optim.stats import Counters
from lightning_sqn.problems import (
    ClassificationTask,
    ReconstructionTask,
    TensorDataModule,
    autoencoder,
    mlp,
    resnet18,
    simple_cnn,
    sparse_init_,
)
from lightning_sqn.report import load_scalars


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_the_layer_shapes() -> None:
    # mlp: sum of (fan_in + 1) * fan_out
    assert _count(mlp()) == (784 + 1) * 128 + (128 + 1) * 128 + (128 + 1) * 10 == 118_282
    assert _count(mlp((3072, 128, 128, 10))) == 411_146  # the "MLP (411k weights)" of Kohler et al.'s Fig. 2
    widths = [784, 1000, 500, 250, 30, 250, 500, 1000, 784]
    assert _count(autoencoder()) == sum((a + 1) * b for a, b in itertools.pairwise(widths))
    curves = [784, 400, 200, 100, 50, 25, 6, 25, 50, 100, 200, 400, 784]
    assert _count(autoencoder((784, 400, 200, 100, 50, 25, 6))) == sum(
        (a + 1) * b for a, b in itertools.pairwise(curves)
    )
    assert _count(simple_cnn()) == 62_006  # the "simple CNN (62k weights)"
    conv1 = 64 * 7 * 7
    assert _count(resnet18(3)) - _count(resnet18(1)) == 2 * conv1


def test_autoencoder_layers_activations_and_output() -> None:
    net = autoencoder()
    kinds = [type(m).__name__ for m in net]
    # logistic units everywhere but the linear code layer (4th linear) and the logits out (8th)
    assert kinds == ["Flatten"] + ["Linear", "Sigmoid"] * 3 + ["Linear"] + ["Linear", "Sigmoid"] * 3 + [
        "Linear"
    ]
    x = torch.rand(5, 1, 28, 28)
    assert net(x).shape == (5, 784)
    with pytest.raises(ValueError, match="init"):
        autoencoder(init="xavier")
    with pytest.raises(ValueError, match="widths"):
        mlp((784,))
    with pytest.raises(ValueError, match="activation"):
        mlp(activation="gelu")


def test_sparse_initialisation_has_15_unit_gaussian_inputs_per_unit() -> None:
    layer = sparse_init_(nn.Linear(784, 1000), generator=torch.Generator().manual_seed(0))
    nonzero = layer.weight != 0
    assert nonzero.sum(dim=1).tolist() == [15] * 1000 and (layer.bias == 0).all()
    values = layer.weight.detach()[nonzero]
    assert (
        abs(float(values.mean())) < 0.05 and abs(float(values.std()) - 1.0) < 0.05
    )  # 15,000 draws of N(0, 1)
    # the inputs are spread over all 784 (not the first 15)
    assert int(nonzero.any(dim=0).sum()) > 700
    small = sparse_init_(nn.Linear(6, 4))  # fewer inputs than 15: all are used
    assert (small.weight != 0).all()
    a = autoencoder(init="sparse", generator_seed=3)
    b = autoencoder(init="sparse", generator_seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert all(int((lin.weight != 0).sum(1).max()) == 15 for lin in a if isinstance(lin, nn.Linear))


def test_reconstruction_loss_and_squared_error_against_a_manual_computation() -> None:
    torch.manual_seed(0)
    net = autoencoder((16, 8, 3))
    task = ReconstructionTask(net, optimizer=partial(torch.optim.SGD, lr=0.1))
    x = torch.rand(4, 1, 4, 4, dtype=torch.float64)
    net.double()
    loss, metrics = task.batch_loss((x, torch.zeros(4)))
    p = torch.sigmoid(net(x))
    t = x.flatten(1)
    manual = -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()
    torch.testing.assert_close(loss, manual)
    torch.testing.assert_close(metrics["squared_error"], ((p - t) ** 2).sum(dim=1).mean())
    torch.testing.assert_close(task.reconstruct(x), p.reshape(x.shape))
    with pytest.raises(ValueError, match="one logit per input pixel"):
        ReconstructionTask(mlp((16, 10)), optimizer=partial(torch.optim.SGD, lr=0.1)).batch_loss(
            (x.float(), None)
        )


def _fit(task, tmp_path, data, epochs=2, strategy="sqn"):
    trainer = lightning.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        strategy=strategy,
        logger=lightning.pytorch.loggers.TensorBoardLogger(tmp_path, name="run", version="seed_0"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
    )
    trainer.fit(task, datamodule=data)
    return trainer


def test_backprops_count_gradients_and_curvature_products(tmp_path) -> None:
    """``train/backprops``: one per batch for SGD; gradient evaluations (closure evaluations less the
    loss-only trial points) plus Hessian-vector products for trust-region Newton, equal to the sum of the
    per-step counts the optimizer reports."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 4, 4), torch.randint(0, 3, (64,))
    data = TensorDataModule((x, y), (x[:16], y[:16]), batch_size=16)
    sgd = ClassificationTask(mlp((16, 8, 3)), optimizer=partial(torch.optim.SGD, lr=0.1), num_classes=3)
    _fit(sgd, tmp_path / "sgd", data, strategy="auto")
    _steps, counts = load_scalars(tmp_path / "sgd", "train/backprops", x="step")["run"][0]
    assert counts.tolist() == list(range(1, 9))  # 4 batches x 2 epochs
    accuracy = load_scalars(tmp_path / "sgd", "train/accuracy_step", x="step")["run"][0][1]
    assert len(accuracy) == 8 and ((0 <= accuracy) & (accuracy <= 100)).all()

    torch.manual_seed(0)
    data = TensorDataModule((x, y), (x[:16], y[:16]), batch_size=16)
    task = ClassificationTask(
        mlp((16, 8, 3)), optimizer=partial(TrustRegionNewton, norm="rmsprop", max_cg_iters=5), num_classes=3
    )
    per_step = []

    class Spy(lightning.Callback):
        def on_train_batch_end(self, trainer, *args):
            stats = trainer.optimizers[0].last_step
            assert stats.loss_only_evals == 1  # the trial point: a forward pass
            per_step.append(stats.closure_evals - stats.loss_only_evals + stats.curvature_products)

    trainer = lightning.Trainer(
        max_epochs=2,
        accelerator="cpu",
        strategy="sqn",
        logger=lightning.pytorch.loggers.TensorBoardLogger(tmp_path / "trn", name="run", version="seed_0"),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        callbacks=[Spy()],
    )
    trainer.fit(task, datamodule=data)
    counts = load_scalars(tmp_path / "trn", "train/backprops", x="step")["run"][0][1]
    expected = [sum(per_step[: i + 1]) for i in range(len(per_step))]
    assert counts.tolist() == expected and all(p >= 2 for p in per_step)  # g(x_k) and >= 1 product
    counters = trainer.optimizers[0].counters
    assert counters.loss_only_evals == counters.steps == 8
    assert counters.backprops == expected[-1] == counters.closure_evals - 8 + counters.curvature_products
    products = load_scalars(tmp_path / "trn", "train/curvature_products", x="step")["run"][0][1]
    assert len(products) == 8 and products[-1] == counters.curvature_products > 0
    assert load_scalars(tmp_path / "sgd", "train/curvature_products") == {}  # torch.optim: no counters


def test_counters_load_states_saved_before_curvature_products_existed() -> None:
    counters = Counters()
    old = {"steps": 3, "closure_evals": 6, "accepted_steps": 2, "stored_pairs": 1, "skipped_pairs": 0}
    counters.load_state_dict(old)
    assert counters.curvature_products == counters.loss_only_evals == 0 and counters.backprops == 6
    with pytest.raises(ValueError, match="lack"):
        counters.load_state_dict({"steps": 1})


def test_autoencoder_trains_under_trust_region_newton(tmp_path) -> None:
    torch.manual_seed(0)
    x = torch.rand(64, 1, 4, 4)
    data = TensorDataModule((x, torch.zeros(64)), (x[:16], torch.zeros(16)), batch_size=32)
    task = ReconstructionTask(autoencoder((16, 8, 4)), optimizer=partial(TrustRegionNewton, norm="adagrad"))
    # Table 1's radius rule (Delta_0 = 1, shrink by 1.1) rejects the first steps on this tiny problem
    _fit(task, tmp_path, data, epochs=15)
    loss = load_scalars(tmp_path, "test/loss")["run"][0][1]
    squared = load_scalars(tmp_path, "test/squared_error")["run"][0][1]
    assert len(loss) == 15 and loss[-1] < loss[0] and squared[-1] < squared[0]
    assert math.isfinite(float(loss[-1]))
