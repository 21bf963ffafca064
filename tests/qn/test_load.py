"""``LimitedMemoryMatrix.load`` (the batched refresh of sampled quasi-Newton methods) against the
sequence of ``update`` calls it replaces: the same pairs kept in the same order, the same gamma and the
same matrix, with one pass for the Gram matrix and one combination pass per pair (L-SR1's residual)
instead of two passes and two reads per pair."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pairs import active_pairs

from lightning_sqn._device import HostReadCounter
from lightning_sqn.qn.lbfgs import LBFGSMatrix
from lightning_sqn.qn.lsr1 import LSR1Matrix

DTYPE = torch.float64


def pair_set(n: int, k: int, seed: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """k pairs y = A s (+ noise) with special members: a pair B already satisfies (refused by the SR1
    skip rule), collinear steps (rank repair), negative curvature (refused by BFGS), a NaN pair."""
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DTYPE))
    A = Q @ torch.diag(torch.linspace(-2.0 if kind == "indefinite" else 0.5, 6.0, n, dtype=DTYPE)) @ Q.T
    S = torch.randn(k, n, generator=gen, dtype=DTYPE)
    Y = S @ A + 0.05 * torch.randn(k, n, generator=gen, dtype=DTYPE)
    if kind == "special":
        S[2] = 3.0 * S[0]  # collinear with the first step
        Y[3] = -Y[3]  # negative curvature for BFGS
        S[4] = float("nan")
    return S, Y


def snapshot(mat) -> tuple:
    S, Y = active_pairs(mat)
    return S, Y, mat.gamma, mat.to_dense()


MATRICES = {
    "lsr1_B": lambda n, m: LSR1Matrix(m, n, form="B"),
    "lsr1_H": lambda n, m: LSR1Matrix(m, n, form="H"),
    "lsr1_B_eigen": lambda n, m: LSR1Matrix(m, n, form="B", gamma="eigen"),
    "lbfgs": lambda n, m: LBFGSMatrix(m, n),
}


@pytest.mark.parametrize("kind", ["plain", "indefinite", "special"])
@pytest.mark.parametrize("name", list(MATRICES))
def test_load_equals_a_sequence_of_updates(name, kind) -> None:
    n, m = 9, 5
    S, Y = pair_set(n, m, seed=hash((name, kind)) % 1000, kind=kind)
    one_by_one = MATRICES[name](n, m)
    for s, y in zip(S, Y, strict=True):
        one_by_one.update(s, y)
    batched = MATRICES[name](n, m)
    batched.update(torch.randn(n, dtype=DTYPE), torch.randn(n, dtype=DTYPE))  # load forgets it
    kept = batched.load(S, Y)
    assert kept == one_by_one.memory.count()
    S1, Y1, g1, B1 = snapshot(one_by_one)
    S2, Y2, g2, B2 = snapshot(batched)
    assert torch.equal(S1, S2) and torch.equal(Y1, Y2)  # the same pairs, in the same order
    assert g2 == pytest.approx(g1, rel=1e-12)
    torch.testing.assert_close(B2, B1, rtol=1e-10, atol=1e-10)
    assert not batched.memory.active[batched.memory.spare]
    assert np.isfinite(batched.memory.G).all()
    if kind == "special":
        assert kept < m  # the NaN pair at least was refused


def test_load_reads_once_per_pair() -> None:
    """One read for the Gram matrix, plus one per pair for L-SR1's explicit residual; one update reads
    twice for L-SR1 (its products, its residual) and once for L-BFGS."""
    n, m = 40, 5
    S, Y = pair_set(n, m, seed=3, kind="plain")
    for make, reads, per_update in ((lambda: LSR1Matrix(m, n), 1 + m, 2), (lambda: LBFGSMatrix(m, n), 1, 1)):
        mat = make()
        with HostReadCounter() as count:
            mat.load(S, Y)
        assert count.host_reads == reads
        mat.reset()
        with HostReadCounter() as count:
            for s, y in zip(S, Y, strict=True):
                mat.update(s, y)
        assert count.host_reads == per_update * m


def test_more_pairs_than_memory_keep_the_newest() -> None:
    n, m = 8, 3
    S, Y = pair_set(n, 6, seed=4, kind="plain")
    ref = LSR1Matrix(m, n)
    for s, y in zip(S, Y, strict=True):
        ref.update(s, y)
    mat = LSR1Matrix(m, n)
    assert mat.load(S, Y) == ref.memory.count()
    torch.testing.assert_close(mat.to_dense(), ref.to_dense(), rtol=1e-12, atol=1e-12)
