"""TrustRegionMonitor and SkippedUpdateCounter: what reaches TensorBoard is what the optimizer published.

Each fit records ``last_step.as_dict()`` after every step and the pair counters at every epoch boundary
(:class:`Recorder`), then reads the TensorBoard event files back and compares.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning
import pytest
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lit_models import MakeOptimizer, Regression, regression_data
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

import lightning_sqn
from lightning_sqn.lightning.callbacks import SkippedUpdateCounter, TrustRegionMonitor
from lightning_sqn.lightning.callbacks.trust_region_monitor import STEP_FIELDS

BATCH, STEPS_PER_EPOCH, EPOCHS = 8, 4, 2
NUM_SAMPLES = BATCH * STEPS_PER_EPOCH

OPTIMIZERS: dict[str, MakeOptimizer] = {
    # a large skip tolerance so that some SR1 pairs are skipped in 8 steps
    "lsr1": lambda p: lightning_sqn.LSR1(p, skip_tol=0.5),
    "lbfgs": lambda p: lightning_sqn.LBFGS(p),
}


class Recorder(lightning.Callback):
    """Keeps what the optimizer published: ``last_step.as_dict()`` per step and the counters at every
    epoch start and end."""

    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []
        self.counters: list[dict[str, int]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.counters.append(trainer.optimizers[0].counters.as_dict())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append(pl_module.optimizers().optimizer.last_step.as_dict())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.counters.append(trainer.optimizers[0].counters.as_dict())


def _loader() -> DataLoader:
    return DataLoader(TensorDataset(*regression_data(NUM_SAMPLES)), batch_size=BATCH, shuffle=False)


def _trainer(callbacks: list, logger: Any, epochs: int = EPOCHS, strategy: str = "auto") -> lightning.Trainer:
    return lightning.Trainer(
        accelerator="cpu",
        devices=1,
        strategy=strategy,
        max_epochs=epochs,
        logger=logger,
        callbacks=callbacks,
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def _fit(tmp_path: Path, make_optimizer: MakeOptimizer, *callbacks: lightning.Callback, **kw: Any):
    recorder = Recorder()
    logger = TensorBoardLogger(save_dir=tmp_path, name="tb", version=0)
    trainer = _trainer([*callbacks, recorder], logger, **kw)
    trainer.fit(Regression(make_optimizer, NUM_SAMPLES), _loader())
    events = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    return recorder, events, trainer


def _series(events: EventAccumulator, tag: str) -> tuple[list[int], list[float]]:
    scalars = events.Scalars(tag)
    return [e.step for e in scalars], [e.value for e in scalars]


def _close(logged: list[float], expected: list[float]) -> None:
    assert logged == pytest.approx(expected, rel=1e-6, abs=1e-30)  # TensorBoard stores float32


def _skipped_expectation(counters: list[dict[str, int]]) -> dict[str, list[float]]:
    """Per-epoch and cumulative skipped pairs and percentages from the counters at epoch boundaries."""
    out: dict[str, list[float]] = {k: [] for k in ("epoch", "epoch_pct", "total", "total_pct")}
    for start, end in zip(counters[::2], counters[1::2], strict=True):
        skipped = end["skipped_pairs"] - start["skipped_pairs"]
        offered = skipped + end["stored_pairs"] - start["stored_pairs"]
        out["epoch"].append(skipped)
        out["epoch_pct"].append(100.0 * skipped / offered)
        out["total"].append(end["skipped_pairs"])
        out["total_pct"].append(100.0 * end["skipped_pairs"] / (end["skipped_pairs"] + end["stored_pairs"]))
    return out


@pytest.mark.parametrize("name", ["lsr1", "lbfgs"])
def test_step_metrics_and_skipped_updates_reach_tensorboard(tmp_path, name) -> None:
    recorder, events, trainer = _fit(
        tmp_path, OPTIMIZERS[name], TrustRegionMonitor(log_histogram=True), SkippedUpdateCounter()
    )
    steps = EPOCHS * STEPS_PER_EPOCH
    assert len(recorder.steps) == steps
    tags = set(events.Tags()["scalars"])

    published = {f for f in STEP_FIELDS if f in recorder.steps[0]}
    if name == "lsr1":
        assert {"radius", "next_radius", "rho", "accepted", "eig_min", "eig_max", "gamma"} <= published
    else:  # a line search: no trust region, so no radius or rho is logged (not even as NaN)
        assert "radius" not in published and "rho" not in published
        assert {"accepted", "step_length", "step_norm", "closure_evals"} <= published
    assert {t for t in tags if not t.startswith("sqn/skipped")} == {f"sqn/{f}" for f in published}
    for field in published:
        logged_steps, values = _series(events, f"sqn/{field}")
        # Lightning's logging step, as for self.log: batch k of the fit is written at step k
        assert logged_steps == list(range(steps))
        _close(values, [float(s[field]) for s in recorder.steps])

    expected = _skipped_expectation(recorder.counters)
    for tag, key in [
        ("skipped_updates", "epoch"),
        ("skipped_updates_pct", "epoch_pct"),
        ("skipped_updates_total", "total"),
        ("skipped_updates_total_pct", "total_pct"),
    ]:
        logged_steps, values = _series(events, f"sqn/{tag}")
        assert logged_steps == [STEPS_PER_EPOCH * (e + 1) for e in range(EPOCHS)]
        _close(values, expected[key])
    if name == "lsr1":
        assert expected["total"][-1] > 0  # the test exercises skipping
        histograms = events.Histograms("sqn/eigenvalues")
        assert [h.step for h in histograms] == list(range(steps))
        last = trainer.optimizers[0].last_step.eigenvalues
        assert histograms[-1].histogram_value.num == last.size
        assert histograms[-1].histogram_value.min == pytest.approx(float(last.min()), rel=1e-6)
    else:  # L-BFGS publishes no eigenvalues: nothing to draw
        assert events.Tags()["histograms"] == []


def test_epoch_interval_aggregates(tmp_path) -> None:
    recorder, events, _ = _fit(tmp_path, OPTIMIZERS["lsr1"], TrustRegionMonitor(logging_interval="epoch"))
    per_epoch = [recorder.steps[e * STEPS_PER_EPOCH : (e + 1) * STEPS_PER_EPOCH] for e in range(EPOCHS)]
    epoch_steps = [STEPS_PER_EPOCH * (e + 1) for e in range(EPOCHS)]

    def series(tag: str) -> list[float]:
        logged_steps, values = _series(events, f"sqn/{tag}")
        assert logged_steps == epoch_steps
        return values

    _close(series("radius"), [sum(s["radius"] for s in ep) / STEPS_PER_EPOCH for ep in per_epoch])
    _close(series("rho"), [sum(s["rho"] for s in ep) / STEPS_PER_EPOCH for ep in per_epoch])
    _close(series("acceptance_rate"), [sum(s["accepted"] for s in ep) / STEPS_PER_EPOCH for ep in per_epoch])
    _close(series("closure_evals"), [sum(s["closure_evals"] for s in ep) for ep in per_epoch])
    _close(series("steps"), [STEPS_PER_EPOCH] * EPOCHS)
    assert "sqn/accepted" not in events.Tags()["scalars"]


def test_epoch_interval_sums_products_and_leaves_out_the_cg_code(tmp_path) -> None:
    """Hessian-free: products and evaluations are epoch totals, lambda and CG iterations epoch means, the
    CG exit code (a category) is logged per step only."""
    make = lambda p: lightning_sqn.HessianFree(p, curvature="hessian", preconditioner=False, max_cg_iters=5)  # noqa: E731
    recorder, events, _ = _fit(tmp_path, make, TrustRegionMonitor(logging_interval="epoch"), strategy="sqn")
    per_epoch = [recorder.steps[e * STEPS_PER_EPOCH : (e + 1) * STEPS_PER_EPOCH] for e in range(EPOCHS)]
    assert all("cg_reason" in s for s in recorder.steps)

    def series(tag: str) -> list[float]:
        return _series(events, f"sqn/{tag}")[1]

    _close(series("curvature_products"), [sum(s["curvature_products"] for s in ep) for ep in per_epoch])
    _close(series("closure_evals"), [sum(s["closure_evals"] for s in ep) for ep in per_epoch])
    _close(series("damping"), [sum(s["damping"] for s in ep) / STEPS_PER_EPOCH for ep in per_epoch])
    _close(
        series("cg_iterations"), [sum(s["cg_iterations"] for s in ep) / STEPS_PER_EPOCH for ep in per_epoch]
    )
    assert "sqn/cg_reason" not in events.Tags()["scalars"]


def test_refuses_optimizers_without_stats(tmp_path) -> None:
    sgd: MakeOptimizer = lambda p: torch.optim.SGD(p, lr=0.1)  # noqa: E731
    for callback, attribute in [(TrustRegionMonitor(), "last_step"), (SkippedUpdateCounter(), "counters")]:
        trainer = _trainer([callback], TensorBoardLogger(save_dir=tmp_path))
        with pytest.raises(MisconfigurationException, match=rf"SGD.*optimizer.{attribute}|{attribute}.*SGD"):
            trainer.fit(Regression(sgd, NUM_SAMPLES), _loader())


def test_refuses_bad_configuration(tmp_path) -> None:
    with pytest.raises(MisconfigurationException, match="'step' or 'epoch'"):
        TrustRegionMonitor(logging_interval="batch")  # type: ignore[arg-type]
    trainer = _trainer([TrustRegionMonitor(log_histogram=True)], CSVLogger(save_dir=tmp_path))
    with pytest.raises(
        MisconfigurationException, match=r"TensorBoardLogger.*CSVLogger|CSVLogger.*TensorBoard"
    ):
        trainer.fit(Regression(OPTIMIZERS["lsr1"], NUM_SAMPLES), _loader())


class SaveAt(lightning.Callback):
    """Saves a checkpoint in the middle of the first epoch (after the callbacks before it have run)."""

    def __init__(self, path: Path, global_step: int) -> None:
        self.path, self.global_step = path, global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.global_step:
            trainer.save_checkpoint(self.path)


def test_state_round_trips_and_is_checkpointed(tmp_path) -> None:
    monitor, counter = TrustRegionMonitor(logging_interval="epoch"), SkippedUpdateCounter()
    ckpt = tmp_path / "mid.ckpt"
    recorder, _, _ = _fit(tmp_path, OPTIMIZERS["lsr1"], monitor, counter, SaveAt(ckpt, 2), epochs=1)

    saved = torch.load(ckpt, weights_only=False)["callbacks"]
    monitor_state, counter_state = saved[monitor.state_key], saved[counter.state_key]
    first_two = recorder.steps[:2]
    assert monitor_state["steps"] == {0: 2}
    assert monitor_state["sums"][0]["radius"] == pytest.approx(sum(s["radius"] for s in first_two))
    assert monitor_state["counts"][0]["rho"] == 2
    assert counter_state == {"epoch_start": {0: [0, 0]}}

    for cls, state in [(TrustRegionMonitor, monitor_state), (SkippedUpdateCounter, counter_state)]:
        fresh = cls(logging_interval="epoch") if cls is TrustRegionMonitor else cls()
        fresh.load_state_dict(state)
        assert fresh.state_dict() == state
        again = cls(logging_interval="epoch") if cls is TrustRegionMonitor else cls()
        again.load_state_dict(fresh.state_dict())
        assert again.state_dict() == state
    # at the end of the epoch the accumulators are logged and cleared
    assert monitor.state_dict() == {"sums": {}, "counts": {}, "steps": {}}
    assert counter.state_dict() == {"epoch_start": {}}


def test_cumulative_skipped_updates_survive_resume(tmp_path) -> None:
    _, full_events, _ = _fit(tmp_path / "full", OPTIMIZERS["lsr1"], SkippedUpdateCounter())

    ckpt = tmp_path / "epoch1.ckpt"
    _, _, first = _fit(tmp_path / "first", OPTIMIZERS["lsr1"], SkippedUpdateCounter(), epochs=1)
    first.save_checkpoint(ckpt)
    logger = TensorBoardLogger(save_dir=tmp_path / "resumed", name="tb", version=0)
    trainer = _trainer([SkippedUpdateCounter()], logger)
    trainer.fit(Regression(OPTIMIZERS["lsr1"], NUM_SAMPLES), _loader(), ckpt_path=ckpt)
    events = EventAccumulator(logger.log_dir)
    events.Reload()

    for tag in ("skipped_updates", "skipped_updates_total", "skipped_updates_total_pct"):
        steps, values = _series(events, f"sqn/{tag}")
        full_steps, full_values = _series(full_events, f"sqn/{tag}")
        assert steps == full_steps[1:]
        assert values == full_values[1:]
        assert values[-1] > 0  # skips happened, and the epoch-2 total counts those of epoch 1
