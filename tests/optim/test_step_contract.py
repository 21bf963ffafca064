"""Contract tests of the step transaction and the optimizer's state, over every optimizer in :mod:`registry`.

* an exception inside ``step()`` (at each closure call of a step) leaves parameters, BatchNorm running
  statistics and the whole optimizer state bitwise as before, and the optimizer then continues exactly
  as one that never saw the failure;
* ``load_state_dict`` is all-or-nothing for each kind of mismatch;
* ``pickle`` and ``copy.deepcopy`` give optimizers that continue bit-identically;
* learning rates come from ``param_groups`` (schedulers act; checkpoints resume), and optimizers
  without one refuse a scheduler with a clear error;
* a closure that never calls ``backward()`` is an error, a computed zero gradient is not.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from registry import OPTIMIZER_CASES, CountingClosure, OptimizerCase, assert_same_structure, make_batches
from torch import Tensor, nn

import lightning_sqn

cases = pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=lambda c: c.name)

WARM_STEPS = 7  # more than the default memory of 5: the next stored pair evicts one


class Interrupt(Exception):
    """Stands for an out-of-memory error, a data error or a KeyboardInterrupt inside the closure."""


def make_bn_mlp(seed: int = 0) -> nn.Module:
    """A 3-8-1 tanh MLP with BatchNorm (float64), so the running statistics are part of the contract."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1)).double()


class RaisingClosure(CountingClosure):
    """Raises :class:`Interrupt` at call ``raise_at`` of the step, after the forward pass (the BatchNorm
    statistics have moved) and before backward."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, batches, raise_at: int) -> None:
        super().__init__(model, optimizer, batches)
        self.raise_at = raise_at

    def __call__(self) -> Tensor:
        self.calls_this_step += 1
        self.optimizer.zero_grad()
        X, y = self.batches[self.batch_index]
        loss = nn.functional.mse_loss(self.model(X), y)
        if self.calls_this_step == self.raise_at:
            raise Interrupt(f"call {self.raise_at}")
        from registry import backward

        backward(loss, self.optimizer)
        return loss


def _warm(case: OptimizerCase, steps: int = WARM_STEPS):
    batches = make_batches()
    model = make_bn_mlp()
    opt = case.factory(model.parameters())
    opt.track_running_stats(model)
    closure = CountingClosure(model, opt, batches)
    for t in range(steps):
        opt.step(closure.new_step(t))
    return model, opt, batches


def _snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> tuple:
    return (
        copy.deepcopy(model.state_dict()),
        copy.deepcopy(opt.state_dict()),
        opt.counters.as_dict(),
        None if opt.last_step is None else opt.last_step.as_dict(),
    )


def _assert_same(a: tuple, b: tuple) -> None:
    assert_same_structure(a[0], b[0], "model")
    assert_same_structure(a[1], b[1], "optimizer")
    assert a[2] == b[2]
    assert_same_structure(a[3], b[3], "last_step")


def _step(model, opt, batches, t: int) -> Tensor:
    return opt.step(CountingClosure(model, opt, batches).new_step(t))


# ------------------------------------------------------------------------------- transactions
@cases
def test_exception_at_any_closure_call_leaves_everything_as_before(case: OptimizerCase) -> None:
    model, opt, batches = _warm(case)
    reference_model, reference_opt = copy.deepcopy((model, opt))
    counting = CountingClosure(reference_model, reference_opt, batches).new_step(WARM_STEPS)
    reference_opt.step(counting)
    calls = counting.calls_this_step
    assert calls >= 1
    before = _snapshot(model, opt)
    for k in range(1, calls + 1):
        with pytest.raises(Interrupt, match=f"call {k}"):
            opt.step(RaisingClosure(model, opt, batches, raise_at=k).new_step(WARM_STEPS))
        _assert_same(_snapshot(model, opt), before)
    # ... and it continues exactly as the optimizer that never failed
    _step(model, opt, batches, WARM_STEPS)
    _assert_same(_snapshot(model, opt), _snapshot(reference_model, reference_opt))


@cases
def test_non_finite_loss_leaves_everything_as_before(case: OptimizerCase) -> None:
    model, opt, batches = _warm(case)
    before = _snapshot(model, opt)
    bad = CountingClosure(model, opt, batches, corrupt=lambda call: call == 1).new_step(WARM_STEPS)
    with pytest.raises(lightning_sqn.NonFiniteLossError):
        opt.step(bad)
    _assert_same(_snapshot(model, opt), before)


# ------------------------------------------------------------------------------- atomic loading
def _mismatches(case: OptimizerCase, state: dict) -> dict[str, dict]:
    """One state_dict per kind of mismatch, each built from a valid ``state``."""
    sqn = state["state"]["sqn"]
    part = next(k for k in sqn if k not in ("optimizer", "counters", "started"))
    out = {}
    out["other class"] = copy.deepcopy(state)
    out["other class"]["state"]["sqn"]["optimizer"] = "SomeOtherOptimizer"
    out["missing part"] = copy.deepcopy(state)
    del out["missing part"]["state"]["sqn"][part]
    out["truncated part"] = copy.deepcopy(state)
    truncated = out["truncated part"]["state"]["sqn"][part]
    del truncated[next(iter(truncated))]
    out["missing counters"] = copy.deepcopy(state)
    del out["missing counters"]["state"]["sqn"]["counters"]["steps"]
    out["other groups"] = copy.deepcopy(state)
    out["other groups"]["param_groups"].append(copy.deepcopy(state["param_groups"][0]))
    out["other option"] = copy.deepcopy(state)
    key, value = case.group_option
    out["other option"]["param_groups"][0][key] = value
    # a tensor of another shape, wherever the part keeps its first tensor
    out["other shape"] = copy.deepcopy(state)

    def reshape_first(d: dict) -> bool:
        for k, v in d.items():
            if isinstance(v, Tensor) and v.numel() > 1:
                d[k] = torch.cat((v.reshape(-1), v.reshape(-1)))
                return True
            if isinstance(v, dict) and reshape_first(v):
                return True
        return False

    assert reshape_first(out["other shape"]["state"]["sqn"][part])
    return out


@cases
def test_load_state_dict_is_all_or_nothing(case: OptimizerCase) -> None:
    model, opt, batches = _warm(case, steps=3)
    _, donor = _warm(case, steps=5)[:2]
    valid = donor.state_dict()
    before = _snapshot(model, opt)
    for kind, bad in _mismatches(case, valid).items():
        with pytest.raises(ValueError) as err:
            opt.load_state_dict(bad)
        assert str(err.value), kind
        _assert_same(_snapshot(model, opt), before)
    # the unchanged optimizer still steps like an untouched copy
    reference_model, reference_opt = copy.deepcopy((model, opt))
    _step(model, opt, batches, 3)
    _step(reference_model, reference_opt, batches, 3)
    _assert_same(_snapshot(model, opt), _snapshot(reference_model, reference_opt))


def test_load_state_dict_of_another_quasi_newton_optimizer_names_both() -> None:
    model = make_bn_mlp()
    lbfgs = lightning_sqn.LBFGS(model.parameters())
    lsr1 = lightning_sqn.LSR1(model.parameters())
    before = copy.deepcopy(lbfgs.state_dict())
    with pytest.raises(ValueError, match="written by LSR1, not LBFGS"):
        lbfgs.load_state_dict(lsr1.state_dict())
    assert_same_structure(lbfgs.state_dict(), before)


# ------------------------------------------------------------------------------- pickle / deepcopy
@cases
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_copies_continue_bit_identically(case: OptimizerCase, how: str) -> None:
    model, opt, batches = _warm(case, steps=4)
    if how == "deepcopy":
        copied_model, copied_opt = copy.deepcopy((model, opt))
    else:
        copied_model, copied_opt = pickle.loads(pickle.dumps((model, opt)))
    for t in range(4, 7):
        assert torch.equal(_step(model, opt, batches, t), _step(copied_model, copied_opt, batches, t))
    _assert_same(_snapshot(model, opt), _snapshot(copied_model, copied_opt))


# ------------------------------------------------------------------------------- learning rates
def _has_lr(opt: torch.optim.Optimizer) -> bool:
    return "lr" in opt.group_options


@cases
def test_schedulers_drive_the_learning_rate_or_are_refused(case: OptimizerCase) -> None:
    model, opt, batches = _warm(case, steps=1)
    if not _has_lr(opt):
        with pytest.raises(
            lightning_sqn.NoLearningRateError, match=f"{type(opt).__name__} has no learning rate"
        ):
            torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
        assert "lr" not in opt.param_groups[0]
        return
    lr0 = opt.param_groups[0]["lr"]
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _step(model, opt, batches, 1)
    scheduler.step()
    assert opt.param_groups[0]["lr"] == lr0 / 2
    # a checkpoint with the scheduled lr resumes, and the next step uses that lr
    resumed_model, resumed_opt = copy.deepcopy((model, opt))
    resumed_opt.load_state_dict(opt.state_dict())
    fresh_model = copy.deepcopy(model)
    fresh = case.factory(fresh_model.parameters())
    fresh.track_running_stats(fresh_model)
    fresh.param_groups[0]["lr"] = lr0 / 2
    fresh.load_state_dict(opt.state_dict())
    for m, o in ((model, opt), (resumed_model, resumed_opt), (fresh_model, fresh)):
        _step(m, o, batches, 2)
    _assert_same(_snapshot(model, opt), _snapshot(resumed_model, resumed_opt))
    assert_same_structure(model.state_dict(), fresh_model.state_dict())


def test_scheduled_lr_is_the_step_that_is_taken() -> None:
    """LBFGS without a line search steps by exactly lr times the direction: halving lr halves the step."""
    batches = make_batches()
    model = make_bn_mlp()
    opt = lightning_sqn.LBFGS(model.parameters(), line_search=None, lr=0.5)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    _step(model, opt, batches, 0)
    unscheduled_model, unscheduled = copy.deepcopy((model, opt))
    scheduler.step()
    assert (opt.param_groups[0]["lr"], unscheduled.param_groups[0]["lr"]) == (0.25, 0.5)
    _step(model, opt, batches, 1)
    _step(unscheduled_model, unscheduled, batches, 1)
    assert opt.last_step.step_length == 0.25 and unscheduled.last_step.step_length == 0.5
    assert opt.last_step.step_norm == pytest.approx(unscheduled.last_step.step_norm / 2, rel=1e-12)


# ------------------------------------------------------------------------------- closures
@cases
def test_closure_without_backward_is_an_error(case: OptimizerCase) -> None:
    model, opt, batches = _warm(case, steps=2)
    before = _snapshot(model, opt)
    X, y = batches[0]

    def forgets_backward() -> Tensor:
        opt.zero_grad()
        return nn.functional.mse_loss(model(X), y)

    def under_no_grad() -> Tensor:
        opt.zero_grad()
        with torch.no_grad():
            return nn.functional.mse_loss(model(X), y)

    for closure in (forgets_backward, under_no_grad):
        with pytest.raises(RuntimeError, match=r"must call loss\.backward"):
            opt.step(closure)
        _assert_same(_snapshot(model, opt), before)


@cases
def test_computed_zero_gradient_is_a_stationary_point_not_an_error(case: OptimizerCase) -> None:
    model = make_bn_mlp()
    opt = case.factory(model.parameters())

    def zero() -> Tensor:  # f = sum ||p - p_0||^2 at p = p_0: a computed zero gradient, Hessian 2 I
        opt.zero_grad()
        loss = sum(((p - p.detach()) ** 2).sum() for p in model.parameters())
        from registry import backward

        backward(loss, opt)
        return loss

    before = [p.detach().clone() for p in model.parameters()]
    opt.step(zero)
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)


@cases
def test_non_scalar_loss_is_refused(case: OptimizerCase) -> None:
    model = make_bn_mlp()
    opt = case.factory(model.parameters())
    X, y = make_batches()[0]

    def per_example() -> Tensor:
        opt.zero_grad()
        loss = (model(X) - y) ** 2
        loss.sum().backward()
        return loss

    with pytest.raises(ValueError, match="returned a loss of shape"):
        opt.step(per_example)


def test_overflow_of_the_float32_gradient_norm_is_named_as_such() -> None:
    """Every entry of g is finite (1e20) but g^T g overflows float32: the message says so."""
    p = nn.Parameter(torch.ones(4))
    opt = lightning_sqn.LSR1([p])

    def closure() -> Tensor:
        opt.zero_grad()
        loss = p.sum() * 1e20
        loss.backward()
        return loss

    with pytest.raises(lightning_sqn.NonFiniteLossError, match=r"squared norm of the gradient overflows"):
        opt.step(closure)
    assert torch.equal(p.detach(), torch.ones(4))


@pytest.mark.parametrize(
    "make",
    [
        lambda p: lightning_sqn.LSR1(p, full_batch=True),
        lambda p: lightning_sqn.LBFGS(p, full_batch=True),
        lambda p: lightning_sqn.SR1(p, full_batch=True),
    ],
    ids=["lsr1", "lbfgs", "sr1"],
)
def test_full_batch_step_rolls_back_its_cached_evaluation(make) -> None:
    """Full batch: a step reuses f, g of the point the last one ended on; a failed step keeps that cache."""
    batches = make_batches(num_batches=1)
    model = make_bn_mlp()
    opt = make(model.parameters())
    opt.track_running_stats(model)
    for t in range(4):
        _step(model, opt, batches, t)
    reference_model, reference_opt = copy.deepcopy((model, opt))
    before = _snapshot(model, opt)
    with pytest.raises(Interrupt):
        opt.step(RaisingClosure(model, opt, batches, raise_at=1).new_step(4))
    _assert_same(_snapshot(model, opt), before)
    for t in (4, 5):
        _step(model, opt, batches, t)
        _step(reference_model, reference_opt, batches, t)
        assert opt.last_step.closure_evals == reference_opt.last_step.closure_evals
    _assert_same(_snapshot(model, opt), _snapshot(reference_model, reference_opt))
