"""Contract tests run over every optimizer configuration in :mod:`registry` (cf. PyTorch's OptimizerInfo).

Each test states one promise every optimizer in the package makes: closures are required and counted,
state round-trips bitwise through ``torch.save``/``torch.load(weights_only=True)``, parameter groups are
one flat vector, state dtypes follow the parameters (float32 for half precision), parameters without a
gradient stay put, runs are deterministic, and non-finite losses are refused at the current point and
rejected (trust region) or backtracked (line search) at a trial point.
"""

from __future__ import annotations

import copy
import io
import json
import math

import pytest
import torch
from registry import (
    LINE_SEARCH_CASES,
    OPTIMIZER_CASES,
    TRUST_REGION_CASES,
    CountingClosure,
    OptimizerCase,
    assert_same_structure,
    backward,
    bitwise_equal,
    full_loss,
    iter_tensors,
    make_batches,
    make_mlp,
    run_steps,
)
from torch import nn
from torch.nn.utils import parameters_to_vector

import lightning_sqn

cases = pytest.mark.parametrize("case", OPTIMIZER_CASES, ids=lambda c: c.name)


def _params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _assert_params_equal(model: nn.Module, expected: list[torch.Tensor]) -> None:
    for p, q in zip(model.parameters(), expected, strict=True):
        assert bitwise_equal(p, q)


# ------------------------------------------------------------------------------------------ closure
@cases
def test_step_without_closure_raises(case: OptimizerCase) -> None:
    model = make_mlp()
    opt = case.factory(model.parameters())
    before = _params(model)
    with pytest.raises(RuntimeError, match="closure") as info:
        opt.step()
    message = str(info.value)
    # The message must explain the Lightning settings that call step() without a closure.
    assert "16-mixed" in message and "DeepSpeed" in message
    _assert_params_equal(model, before)
    assert opt.counters.steps == 0 and opt.last_step is None


@cases
def test_closure_returning_none_raises(case: OptimizerCase) -> None:
    model = make_mlp()
    opt = case.factory(model.parameters())
    X, y = make_batches(1)[0]

    def closure() -> None:
        nn.functional.mse_loss(model(X), y).backward()

    with pytest.raises(RuntimeError, match="returned None"):
        opt.step(closure)


@cases
def test_closure_call_count(case: OptimizerCase) -> None:
    model, batches = make_mlp(), make_batches()
    opt = case.factory(model.parameters())
    closure = CountingClosure(model, opt, batches)
    for t in range(6):
        opt.step(closure.new_step(t))
        assert opt.last_step.closure_evals == closure.calls_this_step
        if case.trust_region:
            assert closure.calls_this_step == 2
    assert opt.counters.closure_evals == closure.calls
    assert opt.counters.steps == 6


def offers_pairs(case: OptimizerCase) -> bool:
    return not case.sampled and not case.name.startswith(("hessian_free", "trust_region_newton"))


@cases
def test_last_step_as_dict_is_plain_python(case: OptimizerCase) -> None:
    model, batches = make_mlp(), make_batches()
    opt = case.factory(model.parameters())
    run_steps(model, opt, batches, 3)
    record = opt.last_step.as_dict()
    assert {"loss", "closure_evals", "accepted", "step_norm", "pairs_in_memory"} <= set(record)
    # the previous step's pair is offered at the start of a step (the sampled quasi-Newton methods offer
    # none of their own; Hessian-free and trust-region Newton keep no pairs)
    assert ("pair_stored" in record) == offers_pairs(case)
    for key, value in record.items():
        allowed = (str,) if key == "line_search_reason" else (bool, int, float)
        assert type(value) in allowed, (key, type(value))
    json.dumps(record)
    for value in opt.counters.as_dict().values():
        assert type(value) is int


# ------------------------------------------------------------------------------------------- state
@cases
def test_state_dict_round_trip_is_bitwise(case: OptimizerCase) -> None:
    k, n = 3, 4
    batches = make_batches()

    reference = make_mlp(seed=0)
    ref_opt = case.factory(reference.parameters())
    ref_losses, ref_records = run_steps(reference, ref_opt, batches, k + n)

    first = make_mlp(seed=0)
    first_opt = case.factory(first.parameters())
    run_steps(first, first_opt, batches, k)
    saved_counters = first_opt.counters.as_dict()
    buffer = io.BytesIO()
    torch.save({"model": first.state_dict(), "optimizer": first_opt.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    resumed = make_mlp(seed=1)  # different initial weights: everything must come from the checkpoint
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt = case.factory(resumed.parameters())
    resumed_opt.load_state_dict(checkpoint["optimizer"])
    assert resumed_opt.counters.as_dict() == saved_counters
    losses, records = run_steps(resumed, resumed_opt, batches, n, start=k)

    assert losses == ref_losses[k:]
    assert_same_structure(records, ref_records[k:])
    _assert_params_equal(resumed, _params(reference))
    assert resumed_opt.counters.as_dict() == ref_opt.counters.as_dict()


@cases
def test_load_state_dict_of_other_optimizer_raises(case: OptimizerCase) -> None:
    model = make_mlp()
    opt = case.factory(model.parameters())
    foreign = torch.optim.SGD(model.parameters(), lr=0.1).state_dict()
    with pytest.raises(ValueError, match="not written by"):
        opt.load_state_dict(foreign)


# ------------------------------------------------------------------------------------ param groups
@cases
def test_two_identical_groups_equal_one_group(case: OptimizerCase) -> None:
    batches = make_batches()
    one = make_mlp()
    opt_one = case.factory(one.parameters())
    two = make_mlp()
    opt_two = case.factory([{"params": two[0].parameters()}, {"params": two[2].parameters()}])
    losses_one, records_one = run_steps(one, opt_one, batches, 5)
    losses_two, records_two = run_steps(two, opt_two, batches, 5)
    assert losses_one == losses_two
    assert_same_structure(records_one, records_two)
    _assert_params_equal(two, _params(one))


@cases
def test_groups_repeating_the_optimizer_options_are_accepted(case: OptimizerCase) -> None:
    key, _ = case.group_option
    model = make_mlp()
    value = case.factory(model.parameters()).defaults[key]
    opt = case.factory(
        [{"params": model[0].parameters(), key: value}, {"params": model[2].parameters(), key: value}]
    )
    assert all(group[key] == value for group in opt.param_groups)


@cases
def test_groups_with_different_options_raise(case: OptimizerCase) -> None:
    key, value = case.group_option
    model = make_mlp()
    with pytest.raises(ValueError, match=key):
        case.factory([{"params": model[0].parameters()}, {"params": model[2].parameters(), key: value}])


@cases
def test_group_option_differing_from_the_optimizer_raises(case: OptimizerCase) -> None:
    """Options are read from the constructor; a group value (even the same in every group) that differs
    would be shown in ``param_groups`` and silently ignored, so it is refused."""
    key, value = case.group_option
    model = make_mlp()
    with pytest.raises(ValueError, match=key):
        case.factory([{"params": model.parameters(), key: value}])
    with pytest.raises(ValueError, match=key):
        case.factory(
            [{"params": model[0].parameters(), key: value}, {"params": model[2].parameters(), key: value}]
        )


@cases
def test_load_state_dict_with_other_options_raises_and_changes_nothing(case: OptimizerCase) -> None:
    key, value = case.group_option
    model, batches = make_mlp(), make_batches()
    opt = case.factory(model.parameters())
    run_steps(model, opt, batches, 2)
    saved = copy.deepcopy(opt.state_dict())
    saved["param_groups"][0][key] = value
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=key):
        opt.load_state_dict(saved)
    assert_same_structure(opt.state_dict(), before)


@cases
def test_add_param_group_after_construction_raises(case: OptimizerCase) -> None:
    model = make_mlp()
    opt = case.factory(model.parameters())
    extra = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="after construction"):
        opt.add_param_group({"params": [extra]})
    assert len(opt.param_groups) == 1


# ------------------------------------------------------------------------------------------ dtypes
#: the Gram matrix of the limited-memory matrices: host float64 by design (all m x m algebra is)
HOST_FLOAT64 = ("/memory/G", "/staged_coef")


def _floating_state(opt: torch.optim.Optimizer) -> list[tuple[str, torch.Tensor]]:
    """The floating-point device buffers of the state (in the parameters' dtype)."""
    return [
        (path, t)
        for path, t in iter_tensors(opt.state_dict()["state"])
        if t.is_floating_point() and not path.endswith(HOST_FLOAT64)
    ]


@cases
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_trains_and_keeps_state_in_parameter_dtype(case: OptimizerCase, dtype: torch.dtype) -> None:
    model, batches = make_mlp(dtype=dtype), make_batches(dtype=dtype)
    opt = case.factory(model.parameters())
    before = full_loss(model, batches)
    run_steps(model, opt, batches, 10)
    assert full_loss(model, batches) < 0.9 * before
    assert opt._flat.dtype == dtype
    state = _floating_state(opt)
    assert state, "the optimizer state holds no floating-point buffer"
    for path, t in state:
        assert t.dtype == dtype, path
    for field, value in vars(opt.last_step).items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            assert value.dtype == dtype, field


@cases
def test_bfloat16_model_keeps_float32_state(case: OptimizerCase) -> None:
    model, batches = make_mlp(dtype=torch.bfloat16), make_batches(dtype=torch.bfloat16)
    opt = case.factory(model.parameters())
    run_steps(model, opt, batches, 4)
    assert opt._flat.dtype == torch.float32
    for path, t in _floating_state(opt):
        assert t.dtype == torch.float32, path
    for p in model.parameters():
        assert p.dtype == torch.bfloat16 and bool(p.isfinite().all())


# ------------------------------------------------------------------------------- unused parameters
@cases
def test_parameter_without_gradient_stays_unchanged(case: OptimizerCase) -> None:
    model, batches = make_mlp(unused=True), make_batches()
    opt = case.factory(model.parameters())
    unused_before = model.unused.detach().clone()
    before = full_loss(model, batches)
    run_steps(model, opt, batches, 6)
    assert bitwise_equal(model.unused, unused_before)
    assert model.unused.grad is None
    assert full_loss(model, batches) < before
    assert bool(parameters_to_vector(model.parameters()).isfinite().all())


# ------------------------------------------------------------------------------------- determinism
@cases
def test_identical_runs_are_identical(case: OptimizerCase) -> None:
    batches = make_batches()
    runs = []
    for _ in range(2):
        model = make_mlp()
        opt = case.factory(model.parameters())
        losses, records = run_steps(model, opt, batches, 6)
        runs.append((losses, records, _params(model)))
    assert runs[0][0] == runs[1][0]
    assert_same_structure(runs[0][1], runs[1][1])
    for p, q in zip(runs[0][2], runs[1][2], strict=True):
        assert bitwise_equal(p, q)


# -------------------------------------------------------------------------------------- non-finite
def _warm(case: OptimizerCase):
    """A model and optimizer after three ordinary steps (so the memory holds pairs)."""
    model, batches = make_mlp(), make_batches()
    opt = case.factory(model.parameters())
    run_steps(model, opt, batches, 3)
    return model, batches, opt


@cases
def test_nan_loss_at_current_point_raises_and_changes_nothing(case: OptimizerCase) -> None:
    model, batches, opt = _warm(case)
    params, state = _params(model), copy.deepcopy(opt.state_dict())
    closure = CountingClosure(model, opt, batches, corrupt=lambda call: call == 1)
    with pytest.raises(lightning_sqn.NonFiniteLossError, match="loss"):
        opt.step(closure.new_step(3))
    _assert_params_equal(model, params)
    assert_same_structure(opt.state_dict(), state)
    # The optimizer is still usable afterwards.
    opt.step(CountingClosure(model, opt, batches).new_step(3))
    assert math.isfinite(opt.last_step.as_dict()["loss"])


@cases
def test_nan_gradient_at_current_point_raises_and_changes_nothing(case: OptimizerCase) -> None:
    model, batches, opt = _warm(case)
    params, state = _params(model), copy.deepcopy(opt.state_dict())
    X, y = batches[0]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(X), y)
        backward(loss, opt)
        model[2].bias.grad.detach().fill_(float("nan"))
        return loss

    with pytest.raises(lightning_sqn.NonFiniteLossError, match="gradient"):
        opt.step(closure)
    _assert_params_equal(model, params)
    assert_same_structure(opt.state_dict(), state)


@pytest.mark.parametrize("case", TRUST_REGION_CASES, ids=lambda c: c.name)
def test_trust_region_rejects_nan_trial_point(case: OptimizerCase) -> None:
    model, batches, opt = _warm(case)
    params = _params(model)
    pairs_before = opt.last_step.as_dict()["pairs_in_memory"]
    skipped_before = opt.counters.as_dict()["skipped_pairs"]
    closure = CountingClosure(model, opt, batches, corrupt=lambda call: call == case.trial_call)
    opt.step(closure.new_step(3))
    record = opt.last_step.as_dict()
    assert closure.calls == case.trial_call and record["closure_evals"] == case.trial_call
    assert math.isnan(record["trial_loss"])
    assert record["accepted"] is False
    assert record["next_radius"] < record["radius"]
    if case.sampled:  # the memory holds the pairs sampled at x_k; the step's pair is never offered
        assert record["pairs_sampled"] == 3 and record["pairs_in_memory"] == record["pairs_kept"]
        skipped = record["pairs_sampled"] - record["pairs_kept"]
        assert opt.counters.as_dict()["skipped_pairs"] == skipped_before + skipped
    _assert_params_equal(model, params)
    # The next step starts from the smaller radius and is finite again; the NaN step's pair, offered at
    # its start, is refused and the memory keeps what it held.
    skipped_before = opt.counters.as_dict()["skipped_pairs"]
    pairs_before = record["pairs_in_memory"]
    opt.step(CountingClosure(model, opt, batches).new_step(4))
    after = opt.last_step.as_dict()
    assert after["radius"] == record["next_radius"]
    # the refused NaN pair sat in the memory's spare slot: it must not reach the step (0 x NaN = NaN)
    assert math.isfinite(after["trial_loss"]) and math.isfinite(after["step_norm"])
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    if not case.sampled:
        assert after["pair_stored"] is False
        assert opt.counters.as_dict()["skipped_pairs"] == skipped_before + 1
        assert after["pairs_in_memory"] <= pairs_before


@pytest.mark.parametrize("case", LINE_SEARCH_CASES, ids=lambda c: c.name)
def test_line_search_handles_nan_trial_point(case: OptimizerCase) -> None:
    model, batches, opt = _warm(case)
    params = _params(model)
    closure = CountingClosure(model, opt, batches, corrupt=lambda call: call == 2)
    opt.step(closure.new_step(3))
    record = opt.last_step.as_dict()
    assert record["closure_evals"] == closure.calls
    if case.nan_trial == "backtrack":
        # The first trial was NaN; a shorter step was found and taken.
        assert closure.calls >= 3
        assert record["accepted"] is True
        assert record["step_length"] > 0
        assert math.isfinite(record["trial_loss"]) and record["trial_loss"] < record["loss"]
        moved = parameters_to_vector(model.parameters()).detach()
        assert not torch.equal(moved, parameters_to_vector(params))
        assert bool(moved.isfinite().all())
    else:  # fixed step, no line search: x stays and the memory restarts
        assert case.nan_trial == "restart"
        assert closure.calls == 2
        assert record["accepted"] is False
        assert record["pairs_in_memory"] == 0
        _assert_params_equal(model, params)
    # The step's pair is offered at the start of the next step: stored after the shorter step (unless the
    # curvature test refuses it), none after the restart.
    opt.step(CountingClosure(model, opt, batches).new_step(4))
    after = opt.last_step.as_dict()
    if not offers_pairs(case) or case.nan_trial == "restart":
        assert "pair_stored" not in after
    else:
        assert isinstance(after["pair_stored"], bool)
