"""PairMemory against a plain Python model of the slots and Gram matrices recomputed from scratch.

The reference keeps m + 1 slots and follows the documented rule: a pair is written into the spare slot
before it is decided on; storing it activates the spare, and when that makes m + 1 active pairs the
oldest is deactivated and its slot becomes the spare (else the first inactive slot does). The Gram
matrices are recomputed as S^T S, S^T Y, Y^T Y from the stored buffer rows after every operation, and
the active pairs are checked against the list of stored pairs (the newest m not dropped).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from lightning_sqn.qn.memory import PairMemory

DTYPE = torch.float64


def push(mem: PairMemory, s: torch.Tensor, y: torch.Tensor, store: bool = True) -> int:
    """Write (s, y) into the spare slot and store it if ``store``; return the slot written."""
    if store:
        return mem.append(s, y)
    slot = mem.spare
    mem.write_spare(s, y)  # a refused pair stays in the spare, inactive
    return slot


class SlotModel:
    """Independent model of the slots: serial numbers, activity, the spare."""

    def __init__(self, m: int, n: int) -> None:
        self.m = m
        self.slots = m + 1
        self.S = torch.zeros(self.slots, n, dtype=DTYPE)
        self.Y = torch.zeros(self.slots, n, dtype=DTYPE)
        self.serial = [-1] * self.slots
        self.active = [False] * self.slots
        self.spare = 0
        self.next_serial = 0
        self.stored: list[tuple[int, torch.Tensor, torch.Tensor]] = []  # (serial, s, y) of live pairs

    def push(self, s: torch.Tensor, y: torch.Tensor, store: bool) -> int:
        k = self.spare
        self.S[k], self.Y[k] = s, y
        if store:
            self.serial[k] = self.next_serial
            self.active[k] = True
            self.stored.append((self.next_serial, s, y))
            self.next_serial += 1
            if sum(self.active) > self.m:
                oldest = min((i for i in range(self.slots) if self.active[i]), key=lambda i: self.serial[i])
                self.active[oldest] = False
                self.spare = oldest
            else:
                self.spare = self.active.index(False)
            self.stored = self.stored[-self.m :]
        return k

    def keep(self, mask: list[bool]) -> None:
        dropped = {self.serial[i] for i in range(self.slots) if self.active[i] and not mask[i]}
        self.active = [a and b for a, b in zip(self.active, mask, strict=True)]
        self.stored = [p for p in self.stored if p[0] not in dropped]


def assert_matches(mem: PairMemory, ref: SlotModel) -> None:
    torch.testing.assert_close(mem.S, ref.S, rtol=0, atol=0)
    torch.testing.assert_close(mem.Y, ref.Y, rtol=0, atol=0)
    active = [i for i in range(ref.slots) if ref.active[i]]
    # serial of inactive slots is irrelevant after keep/clear; compare the active ones and the mask.
    assert mem.active.tolist() == ref.active
    assert mem.spare == ref.spare and not mem.active[mem.spare]
    assert [int(mem.serial[i]) for i in active] == [ref.serial[i] for i in active]
    assert int(mem.next_serial) == ref.next_serial
    assert int(mem.count()) == len(active) <= ref.m
    # the active pairs in time order are the live stored pairs (the newest m, less those dropped)
    order = sorted(active, key=lambda i: int(mem.serial[i]))
    assert [int(mem.serial[i]) for i in order] == [p[0] for p in ref.stored]
    for i, (_, s, y) in zip(order, ref.stored, strict=True):
        assert torch.equal(mem.S[i], s) and torch.equal(mem.Y[i], y)
    # Gram matrices equal the products recomputed from the buffer rows (the active block: inactive
    # slots hold whatever they held when they were active).
    ix = np.ix_(active, active)
    for name, ref_gram in (("SS", ref.S @ ref.S.T), ("SY", ref.S @ ref.Y.T), ("YY", ref.Y @ ref.Y.T)):
        torch.testing.assert_close(
            torch.from_numpy(getattr(mem, name)[ix]), ref_gram[ix], rtol=1e-13, atol=1e-13
        )
    torch.testing.assert_close(
        torch.from_numpy(
            mem.gram()[
                np.ix_(active + [ref.slots + i for i in active], active + [ref.slots + i for i in active])
            ]
        ),
        torch.cat((ref.S[active], ref.Y[active])) @ torch.cat((ref.S[active], ref.Y[active])).T,
        rtol=1e-13,
        atol=1e-13,
    )


def test_many_pushes_with_wraparound_skips_keep_and_clear() -> None:
    gen = torch.Generator().manual_seed(0)
    m, n = 4, 7
    mem = PairMemory(m, n, dtype=DTYPE, device="cpu")
    ref = SlotModel(m, n)
    assert_matches(mem, ref)
    for step in range(60):
        s = torch.randn(n, generator=gen, dtype=DTYPE)
        y = torch.randn(n, generator=gen, dtype=DTYPE)
        store = bool(torch.rand((), generator=gen) < 0.75)
        expected_slot = ref.spare
        slot = push(mem, s, y, store)
        ref.push(s, y, store)
        assert int(slot) == expected_slot
        assert_matches(mem, ref)
        if step % 11 == 10:  # drop a random subset (rank repair / forgetting use keep)
            mask = (torch.rand(m + 1, generator=gen) < 0.5).tolist()
            mem.keep(np.array(mask))
            ref.keep(mask)
            assert_matches(mem, ref)
        if step == 37:
            mem.clear()
            ref.keep([False] * (m + 1))
            assert_matches(mem, ref)
    assert ref.next_serial > 2 * m  # the slots were reused several times


def test_slot_choice_spare_then_oldest() -> None:
    m, n = 3, 2
    mem = PairMemory(m, n, dtype=DTYPE, device="cpu")
    one = torch.ones(n, dtype=DTYPE)
    assert mem.spare == 0
    assert [push(mem, k * one, one) for k in range(1, 4)] == [0, 1, 2]
    assert mem.spare == 3 and mem.count() == 3
    assert push(mem, 4 * one, one) == 3  # m + 1 active: the oldest (serial 0, slot 0) becomes the spare
    assert mem.spare == 0 and mem.active.tolist() == [False, True, True, True]
    assert push(mem, 5 * one, one) == 0
    assert mem.spare == 1
    # A refused pair is written into the spare and changes nothing else.
    assert push(mem, 9 * one, one, store=False) == 1
    assert mem.spare == 1 and mem.count() == 3
    # Drop slot 2 (serial 2): the next pair fills the spare, and the memory is not full, so the
    # first inactive slot (2) becomes the spare and nothing is evicted.
    mem.keep(np.array([True, True, False, True]))
    assert push(mem, 6 * one, one) == 1
    assert mem.spare == 2 and mem.active.tolist() == [True, True, False, True]
    assert mem.S[:, 0].tolist() == [5.0, 6.0, 3.0, 4.0]
    assert [int(mem.serial[i]) for i in (0, 1, 3)] == [4, 5, 3]


def test_project_and_combine() -> None:
    gen = torch.Generator().manual_seed(2)
    m, n = 3, 6
    mem = PairMemory(m, n, dtype=DTYPE, device="cpu")
    for _ in range(4):
        push(mem, torch.randn(n, generator=gen, dtype=DTYPE), torch.randn(n, generator=gen, dtype=DTYPE))
    S, Y = mem.S.clone(), mem.Y.clone()
    v = torch.randn(n, generator=gen, dtype=DTYPE)
    V = torch.randn(n, 2, generator=gen, dtype=DTYPE)
    torch.testing.assert_close(mem.project(v), torch.cat((S @ v, Y @ v)))
    torch.testing.assert_close(mem.project(V), torch.cat((S @ V, Y @ V)))
    m = mem.slots  # products and combinations run over every slot
    c = torch.randn(2 * m, generator=gen, dtype=DTYPE)
    C = torch.randn(2 * m, 2, generator=gen, dtype=DTYPE)
    torch.testing.assert_close(mem.combine(c), S.T @ c[:m] + Y.T @ c[m:])
    torch.testing.assert_close(mem.combine(c, v=v), v + S.T @ c[:m] + Y.T @ c[m:])
    torch.testing.assert_close(mem.combine(C, v=V), V + S.T @ C[:m] + Y.T @ C[m:])
    out = torch.empty(n, dtype=DTYPE)
    mem.combine(c, v=v, out=out)
    torch.testing.assert_close(out, v + S.T @ c[:m] + Y.T @ c[m:])
    torch.testing.assert_close(mem.combine(c.numpy(), v=v, beta=-0.5), -0.5 * v + S.T @ c[:m] + Y.T @ c[m:])


def test_state_dict_round_trip() -> None:
    gen = torch.Generator().manual_seed(3)
    m, n = 3, 5
    mem = PairMemory(m, n, dtype=DTYPE, device="cpu")
    for _ in range(5):
        push(mem, torch.randn(n, generator=gen, dtype=DTYPE), torch.randn(n, generator=gen, dtype=DTYPE))
    mem.keep(np.array([True, False, True, True]))
    buf = io.BytesIO()
    torch.save(mem.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    other = PairMemory(m, n, dtype=DTYPE, device="cpu")
    other.load_state_dict(state)

    def same(a: PairMemory, b: PairMemory) -> None:
        assert torch.equal(a.SY_buf, b.SY_buf) and a.next_serial == b.next_serial and a.spare == b.spare
        for name in PairMemory._HOST:
            assert np.array_equal(getattr(a, name), getattr(b, name)), name

    same(other, mem)
    # Both continue identically.
    s, y = torch.randn(n, generator=gen, dtype=DTYPE), torch.randn(n, generator=gen, dtype=DTYPE)
    assert push(mem, s, y) == push(other, s, y)
    same(other, mem)
    with pytest.raises(ValueError, match="cannot be loaded"):
        PairMemory(m + 1, n, dtype=DTYPE, device="cpu").load_state_dict(state)
    with pytest.raises(ValueError, match="cannot be loaded"):
        PairMemory(m, n + 1, dtype=DTYPE, device="cpu").load_state_dict(state)
    bad = dict(state, spare=int(np.flatnonzero(mem.active)[0]))
    with pytest.raises(ValueError, match="spare"):
        other.load_state_dict(bad)


@pytest.mark.parametrize("memory", [0, -1, True, 2.0])
def test_bad_memory_raises(memory) -> None:
    with pytest.raises(ValueError, match="memory"):
        PairMemory(memory, 3, dtype=DTYPE, device="cpu")


@pytest.mark.parametrize("n", [7, 40_000])  # one block, and three blocks with padding
def test_step_passes_against_explicit_products(n) -> None:
    """Pass 1 (with the spare's y as left-hand side, wherever the spare is), pass 2 and the staged
    products equal the same products formed explicitly from the rows."""
    gen = torch.Generator().manual_seed(4)
    m = 3
    mem = PairMemory(m, n, dtype=DTYPE, device="cpu")

    def rand() -> torch.Tensor:
        return torch.randn(n, generator=gen, dtype=DTYPE)

    for k in range(2 * m + 1):  # the spare moves through every slot
        push(mem, rand(), rand())
        mem.write_spare(rand(), rand())
        for row in (mem.g, mem.d, mem.g_trial):
            row.copy_(torch.randn(n, generator=gen, dtype=DTYPE))
        q, S = mem.spare, mem.slots
        f = torch.tensor(1.5 + k, dtype=DTYPE)
        values = mem.step_products(f).numpy().copy()
        assert values[0] == 1.5 + k
        Py, Pg, W = mem.sum_step_products(values[1:])
        rows = torch.cat((mem.SY_buf, mem.g[None]))
        torch.testing.assert_close(torch.from_numpy(Py), rows @ mem.Y[q], rtol=1e-12, atol=1e-10)
        torch.testing.assert_close(torch.from_numpy(Pg), rows @ mem.g, rtol=1e-12, atol=1e-10)
        c = torch.randn(2 * S, generator=gen, dtype=DTYPE)
        d = mem.combine_step(c.numpy(), -0.7)
        assert d.data_ptr() == mem.d.data_ptr()
        torch.testing.assert_close(d, -0.7 * mem.g + mem.SY_buf.T @ c, rtol=1e-12, atol=1e-10)
        mem.stage_products()
        W = mem.sum_step_products(mem.step_products(f).numpy()[1:])[2]
        expect = [mem.d @ mem.d, mem.d @ mem.g_trial, mem.g_trial @ mem.g_trial]
        torch.testing.assert_close(torch.from_numpy(W), torch.stack(expect), rtol=1e-12, atol=1e-10)
        np.testing.assert_allclose(mem.staged_products(), W, rtol=1e-14)


def test_transaction_restores_slots_written_mid_step() -> None:
    """Pairs written by write_spare inside a transaction (sampled refreshes) overwrite slots that held
    active pairs; a rollback restores those rows and the host state."""
    gen = torch.Generator().manual_seed(5)
    m, n = 3, 6
    mem = PairMemory(m, n, dtype=DTYPE, device="cpu")
    for _ in range(5):
        push(mem, torch.randn(n, generator=gen, dtype=DTYPE), torch.randn(n, generator=gen, dtype=DTYPE))
    before = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in mem.state_dict().items()}
    token = mem.begin()
    mem.clear()
    for _ in range(4):
        push(mem, torch.randn(n, generator=gen, dtype=DTYPE), torch.randn(n, generator=gen, dtype=DTYPE))
    mem.rollback(token)
    for k, v in mem.state_dict().items():
        assert torch.equal(v, before[k]) if isinstance(v, torch.Tensor) else v == before[k], k


def test_state_of_the_previous_layout_is_refused_clearly() -> None:
    mem = PairMemory(3, 5, dtype=DTYPE, device="cpu")
    old = {k: v for k, v in mem.state_dict().items() if k not in ("G", "spare")}
    old.update(SS=torch.zeros(3, 3), SY=torch.zeros(3, 3), YY=torch.zeros(3, 3))
    with pytest.raises(ValueError, match="before 2026-12-03"):
        mem.load_state_dict(old)
