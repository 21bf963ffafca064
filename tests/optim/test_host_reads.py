"""What a step costs on an accelerator in host reads, proven on the CPU.

Inside ``accelerator_code_path()`` the hot paths take the form they take on a GPU (masked writes, a fixed
Newton iteration count, device-side accept/reject), and ``HostReadCounter`` counts every value read back
to the host: the optimizer's own reads, and the eigendecompositions, whose kernels read their status
back on CUDA (torch has no ``eigh_ex``). The limited-memory trust-region methods read once per step (the
finiteness check of f(x_k), g(x_k)) plus one read per eigendecomposition (OBS: two; rank repair: one
batched call per offered pair; ``gamma="eigen"``: two more per offered pair); the line-search methods
read once more for the direction and once per trial point. No step may use an operation whose output
shape depends on the data, and none may make a tensor from host data (a host-to-device copy on an
accelerator). Both forms must compute the same iterates.
"""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch
from registry import OPTIMIZER_CASES, CountingClosure, make_batches, make_mlp, minimize_rosenbrock

import lightning_sqn
from lightning_sqn._device import (
    HostReadCounter,
    accelerator_code_path,
    device_scalar,
    one_hot_mask,
    read_to_host,
    select_row,
)
from lightning_sqn.subproblem.result import SubproblemStatus

# Limited-memory optimizers (dense BFGS/SR1 for tiny models, Hessian-free's CG and the Steihaug-CG
# solvers decide on the host by design and are not listed).
TRUST_REGION = ["lsr1_tr_scaled", "lsr1_tr_eigen", "sampled_lsr1_hessian", "sampled_lsr1_gradient"]
LINE_SEARCH = [
    "lsr1_ls_scaled",
    "lsr1_ls_eigen",
    "lbfgs",
    "lbfgs_forget3",
    "lbfgs_fixed_step",
    "sampled_lbfgs_hessian",
]
INTERIOR, BOUNDARY = int(SubproblemStatus.INTERIOR), int(SubproblemStatus.BOUNDARY)
CASES = {c.name: c for c in OPTIMIZER_CASES}
STEPS = 10


def counted_steps(
    name: str, *, device_path: bool
) -> tuple[list[tuple[int, int, int, dict]], torch.nn.Module]:
    """``STEPS`` steps of a registry case; per step (the optimizer's own host reads, eigendecompositions
    (status reads on CUDA), data-dependent-shape operations, ``last_step.as_dict()``)."""
    model = make_mlp()
    opt = CASES[name].factory(model.parameters())
    closure = CountingClosure(model, opt, make_batches())
    out = []
    for t in range(STEPS):
        with accelerator_code_path() if device_path else nullcontext(), HostReadCounter() as count:
            opt.step(closure.new_step(t))
        own = count.host_reads - count.linalg_reads
        # a tensor made from host data is a host-to-device copy on an accelerator: none allowed
        assert count.host_writes == 0, (name, t)
        out.append((own, count.linalg_reads, count.data_dependent, opt.last_step.as_dict()))
    return out, model


def test_the_closure_itself_reads_nothing() -> None:
    """So every read counted below belongs to the optimizer."""
    model = make_mlp()
    opt = lightning_sqn.LSR1(model.parameters())
    closure = CountingClosure(model, opt, make_batches())
    with HostReadCounter() as count:
        closure.new_step(0)()
    assert count.ops > 0
    assert count.host_reads == 0 and count.data_dependent == 0


#: Eigendecompositions per trust-region step: OBS (2) and, per offered pair, the batched rank-repair
#: check (1) plus, with gamma="eigen", the pencil (2). The sampled methods (memory 3, gamma="eigen")
#: offer their three sampled pairs at every step, the others the step's own pair.
EIGENDECOMPOSITIONS = {
    "lsr1_tr_scaled": 2 + 1,
    "lsr1_tr_eigen": 2 + 1 + 2,
    "sampled_lsr1_hessian": 2 + 3 * (1 + 2),
    "sampled_lsr1_gradient": 2 + 3 * (1 + 2),
}


@pytest.mark.parametrize("name", TRUST_REGION)
def test_trust_region_steps_read_the_host_once_besides_eigendecompositions(name: str) -> None:
    steps, _ = counted_steps(name, device_path=True)
    assert [own for own, _, _, _ in steps] == [1] * STEPS
    assert [linalg for _, linalg, _, _ in steps] == [EIGENDECOMPOSITIONS[name]] * STEPS
    assert all(dd == 0 for _, _, dd, _ in steps)
    # The run went through both outcomes of the device-side accept/reject, not only the easy one, and
    # (pairs of the step itself) through interior and boundary subproblems and ring-buffer wraparound.
    records = [rec for _, _, _, rec in steps]
    assert {bool(rec["accepted"]) for rec in records} == {True, False}
    if not CASES[name].sampled:
        assert {int(rec["subproblem_status"]) for rec in records} >= {INTERIOR, BOUNDARY}
        assert sum(bool(rec["pair_stored"]) for rec in records) > 5  # memory 5: the buffer wrapped


@pytest.mark.parametrize("name", LINE_SEARCH)
def test_line_search_steps_read_once_per_decision(name: str) -> None:
    """f(x_k) and g(x_k) finite (1), g^T d, ||d|| and the pair count (1, again after a steepest-descent
    fallback), then f and phi' at each trial point (one per closure call after the first)."""
    steps, _ = counted_steps(name, device_path=True)
    for own, linalg, dd, rec in steps:
        expected = 1 + 1 + int(bool(rec["fallback_to_gradient"])) + (rec["closure_evals"] - 1)
        assert own == expected, rec
        # L-SR1 (H form) checks N^{-1} of each offered pair with one eigvalsh, two more for the pencil
        # of gamma="eigen"; the L-BFGS matrices use no eigendecomposition.
        per_pair = {"lsr1_ls_scaled": 1, "lsr1_ls_eigen": 3}.get(name, 0)
        assert linalg == per_pair * int(bool(rec["accepted"])), rec
        assert dd == 0


@pytest.mark.parametrize("name", TRUST_REGION + LINE_SEARCH)
def test_accelerator_form_computes_the_same_iterates(name: str) -> None:
    """Fixed-count secular Newton, masked pair writes and device-side accept/reject: same run."""
    host, model_h = counted_steps(name, device_path=False)
    device, model_d = counted_steps(name, device_path=True)
    for (*_, a), (*_, b) in zip(host, device, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-10, abs=0)
        assert a["accepted"] == b["accepted"] and a["pair_stored"] == b["pair_stored"]
    for p, q in zip(model_h.parameters(), model_d.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("method", ["trust_region", "line_search"])
def test_rosenbrock_converges_in_the_accelerator_form(method: str) -> None:
    with accelerator_code_path():
        minimize_rosenbrock(lambda p: lightning_sqn.LSR1(p, memory=5, method=method), n=20, max_steps=400)


# ------------------------------------------------------------------------------------- the helpers
def test_one_hot_mask_and_select_row_read_nothing() -> None:
    rows = torch.arange(12.0).reshape(4, 3)
    for i in range(4):
        index = torch.tensor(i)
        with HostReadCounter() as count:
            mask = one_hot_mask(index, 4)
            row = select_row(rows, index)
        assert count.host_reads == 0 and count.data_dependent == 0
        assert torch.equal(mask, torch.nn.functional.one_hot(index, 4).bool())
        assert torch.equal(row, rows[i])
    with HostReadCounter() as count:
        torch.nn.functional.one_hot(torch.tensor(1), 4)  # what one_hot_mask replaces: it reads back
    assert count.host_reads > 0


def test_device_scalar_is_no_host_write() -> None:
    with HostReadCounter() as count:
        a = device_scalar(2.5, dtype=torch.float64, device="cpu")
        b = device_scalar(True, dtype=torch.bool, device="cpu")
        torch.tensor(2.5)  # what device_scalar replaces
    assert a.dtype == torch.float64 and float(a) == 2.5 and a.ndim == 0 and bool(b)
    assert count.host_writes == 1


def test_read_to_host_is_one_read_of_all_values() -> None:
    with HostReadCounter() as count:
        values = read_to_host(torch.tensor(1.5, dtype=torch.float64), torch.tensor(3), torch.tensor(-0.25))
    assert values == [1.5, 3.0, -0.25]
    assert count.host_reads == 1


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


def test_counter_charges_eigendecompositions_but_not_the_ex_routines() -> None:
    """linalg.eigh/eigvalsh read their LAPACK/cuSOLVER status back on CUDA; inv_ex does not."""
    A = torch.eye(3, dtype=torch.float64) * 2.0
    with HostReadCounter() as count:
        torch.linalg.eigh(A)
        torch.linalg.eigvalsh(torch.stack((A, A)))
        torch.linalg.inv_ex(A)
    assert count.host_reads == 2 and count.linalg_reads == 2
