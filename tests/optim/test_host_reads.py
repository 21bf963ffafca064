"""What a step costs in device operations and host transfers, counted on the CPU.

``HostReadCounter`` sees every ATen operation (on a GPU about one kernel launch each), every value
read back to the host (a synchronisation on an accelerator) and every host-to-device copy. The
limited-memory optimizers keep only O(n) work on the device and do all m x m algebra on the host in
float64: a trust-region step reads the host twice (after the evaluation at x_k: f and the projections
of the step's one pass; after the trial: f(x_k + s_k)) and sends one small coefficient vector back; a
line-search step reads once after the first evaluation and once per trial point. No step uses an
operation whose output shape depends on the data, and no eigendecomposition runs on the device.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from registry import OPTIMIZER_CASES, CountingClosure, make_batches, make_mlp

import lightning_sqn
from lightning_sqn._device import HostReadCounter, read_to_host, to_device, to_host
from lightning_sqn.subproblem.result import SolverStatus

TRUST_REGION = ["lsr1_tr_scaled", "lsr1_tr_eigen"]
LINE_SEARCH = ["lsr1_ls_scaled", "lsr1_ls_eigen", "lbfgs", "lbfgs_forget3", "lbfgs_fixed_step"]
SAMPLED = ["sampled_lsr1_hessian", "sampled_lsr1_gradient", "sampled_lbfgs_hessian"]
INTERIOR, BOUNDARY = int(SolverStatus.INTERIOR), int(SolverStatus.BOUNDARY)
CASES = {c.name: c for c in OPTIMIZER_CASES}
STEPS = 10
#: device operations outside the closure in one limited-memory step (see docs/benchmarks.md)
TRUST_REGION_OPS = 30


def counted_steps(name: str) -> list[tuple[HostReadCounter, int, dict]]:
    """``STEPS`` steps of a registry case: (counter, operations of the closure calls, record)."""
    model = make_mlp()
    opt = CASES[name].factory(model.parameters())
    closure = CountingClosure(model, opt, make_batches())
    with HostReadCounter() as probe:  # the closure's own operations, to subtract
        closure.new_step(0)()
    out = []
    for t in range(STEPS):
        with HostReadCounter() as count:
            opt.step(closure.new_step(t))
        rec = opt.last_step.as_dict()
        out.append((count, count.ops - probe.ops * rec["closure_evals"], rec))
    return out


def test_the_closure_itself_reads_nothing() -> None:
    """So every read counted below belongs to the optimizer."""
    model = make_mlp()
    opt = lightning_sqn.LSR1(model.parameters())
    closure = CountingClosure(model, opt, make_batches())
    with HostReadCounter() as count:
        closure.new_step(0)()
    assert count.ops > 0
    assert count.host_reads == 0 and count.data_dependent == 0


@pytest.mark.parametrize("name", TRUST_REGION)
def test_trust_region_step_reads_twice_and_sends_one_vector(name: str) -> None:
    steps = counted_steps(name)
    assert [c.host_reads for c, _, _ in steps] == [2] * STEPS
    assert all(c.linalg_reads == 0 and c.data_dependent == 0 for c, _, _ in steps)
    assert all(c.host_writes == 1 for c, _, _ in steps)  # the 2m coefficients of the step
    assert max(ops for _, ops, _ in steps[1:]) <= TRUST_REGION_OPS
    # The run went through both outcomes of accept/reject, interior and boundary subproblems and
    # ring-buffer wraparound.
    records = [rec for _, _, rec in steps]
    assert {rec["accepted"] for rec in records} == {True, False}
    assert {rec["subproblem_status"] for rec in records} >= {INTERIOR, BOUNDARY}
    assert sum(bool(rec.get("pair_stored")) for rec in records) > 5  # memory 5: the buffer wrapped


@pytest.mark.parametrize("name", LINE_SEARCH)
def test_line_search_steps_read_once_per_evaluation(name: str) -> None:
    """f(x_k) with the projections (1), then f and phi' at each trial point."""
    for t, (count, ops, rec) in enumerate(counted_steps(name)):
        assert count.host_reads == rec["closure_evals"], rec
        assert count.linalg_reads == 0 and count.data_dependent == 0
        assert count.host_writes == 1  # the coefficients of d = -H g
        if t > 0:  # (the first step also makes the flat buffers' parameter views, once)
            assert ops <= TRUST_REGION_OPS + 12 * (rec["closure_evals"] - 2), (ops, rec)


@pytest.mark.parametrize("name", SAMPLED)
def test_sampled_steps_use_no_device_linear_algebra(name: str) -> None:
    """The refresh offers m = 3 pairs (each: its products and residual, read once or twice) and
    re-projects g once; nothing data-dependent, no eigendecomposition on the device."""
    for count, _, rec in counted_steps(name):
        assert count.linalg_reads == 0 and count.data_dependent == 0
        assert count.host_reads <= rec["closure_evals"] + 3 * 3 + 2, rec


def test_full_batch_trust_region_evaluates_once_per_step() -> None:
    model = make_mlp()
    opt = lightning_sqn.LSR1(model.parameters(), full_batch=True)
    closure = CountingClosure(model, opt, make_batches())
    step0 = closure.new_step(0)  # one batch for every step: the full-batch setting
    opt.step(step0)
    assert opt.last_step.closure_evals == 2
    for _ in range(5):
        with HostReadCounter() as count:
            opt.step(step0)
        assert opt.last_step.closure_evals == 1 and count.host_reads == 2


# ------------------------------------------------------------------------------------- the helpers
def test_to_host_is_one_read_of_all_values() -> None:
    with HostReadCounter() as count:
        values = read_to_host(torch.tensor(1.5, dtype=torch.float64), torch.tensor(3.0), torch.tensor(-0.25))
        block = to_host(torch.tensor(2.0), torch.arange(6.0).reshape(2, 3))
    assert values == [1.5, 3.0, -0.25]
    assert block.dtype == np.float64 and block.tolist() == [2.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert count.host_reads == 2


def test_to_device_is_one_host_write() -> None:
    like = torch.zeros(3, dtype=torch.float32)
    with HostReadCounter() as count:
        t = to_device(np.array([1.0, 2.0, 0.5]), like)
    assert t.dtype == torch.float32 and t.tolist() == [1.0, 2.0, 0.5]
    assert count.host_writes == 1


def test_counter_sees_item_bool_and_mask_indexing() -> None:
    t = torch.tensor([1.0, -2.0, 3.0])
    with HostReadCounter() as count:
        t.sum().item()
        bool(t[0] > 0)
        float(t.amax())
        t[t > 0]  # boolean-mask indexing: the result's shape depends on the data
        t.nonzero()
        t[torch.tensor([0, 2])]  # integer indexing: no read
    assert count.host_reads == 3
    assert count.data_dependent == 2
    assert isinstance(count.by_op, collections.Counter)


def test_counter_charges_eigendecompositions_but_not_the_ex_routines() -> None:
    """linalg.eigh/eigvalsh read their LAPACK/cuSOLVER status back on CUDA; inv_ex does not."""
    A = torch.eye(3, dtype=torch.float64) * 2.0
    with HostReadCounter() as count:
        torch.linalg.eigh(A)
        torch.linalg.eigvalsh(torch.stack((A, A)))
        torch.linalg.inv_ex(A)
    assert count.host_reads == 2 and count.linalg_reads == 2


def test_float32_step_agrees_with_float64_algebra_on_the_same_pairs() -> None:
    """The m x m algebra runs in float64 on the host whatever the parameters' dtype, so a float32 step
    differs from a float64 computation on the same stored pairs only by the float32 passes over the
    buffer (projections, Gram updates, the combination): ~1e-6 relative, not the ~1e-4 that float32
    small algebra gave."""
    from lightning_sqn.qn.lsr1 import LSR1Matrix
    from lightning_sqn.subproblem.obs import solve_obs

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.Tanh(), torch.nn.Linear(64, 5))
    X, y = torch.randn(256, 20), torch.randint(0, 5, (256,))
    opt = lightning_sqn.LSR1(model.parameters(), memory=5)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(X), y)
        loss.backward()
        return loss

    for _ in range(6):
        opt.step(closure)
    lm, mat = opt._model, opt.matrix
    # The next step's subproblem in float32 storage: the model's own phases.
    f = opt.evaluation(closure, lm.g)
    values = to_host(lm.gather(f))
    lm.peek_gg(values)
    lm.absorb(values)
    radius = opt._stepper.radius
    res = lm.solve(radius)
    s32 = lm.s.double()
    # The same pairs (time order), gamma and g, everything in float64.
    mem = mat.memory
    assert mem.count() >= 3
    ref = LSR1Matrix(5, mem.n, dtype=torch.float64, gamma=mat.gamma, rank_tol=mat.rank_tol)
    for j in np.argsort(np.where(mem.active, mem.serial, np.iinfo(np.int64).max))[: mem.count()]:
        ref.memory.append(mem.S[j].double(), mem.Y[j].double())
    ref._invalidate()
    exact = solve_obs(ref, lm.g.double(), radius)
    assert exact.status == res.status
    err = float(torch.linalg.vector_norm(s32 - exact.step) / torch.linalg.vector_norm(exact.step))
    print(f"float32 step vs float64: {err:.2e}")
    assert err < 1e-5, err
    assert res.predicted_reduction == pytest.approx(exact.predicted_reduction, rel=1e-5)
