"""PairMemory against a plain Python model of the ring buffer and Gram matrices recomputed from scratch.

The reference keeps the pairs in a dict slot -> (serial, s, y) and picks the slot the documented way
(the first empty slot, else the slot of the oldest active pair); the Gram matrices are recomputed as
S^T S, S^T Y, Y^T Y from the stored buffer rows after every operation.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from lightning_sqn.qn.memory import PairMemory

DTYPE = torch.float64


def push(mem: PairMemory, s: torch.Tensor, y: torch.Tensor, store: bool = True) -> int:
    """Store (s, y) if ``store`` (the slot written), else return the slot it would have taken."""
    return mem.append(s, y) if store else mem.next_slot()


def host(name: str, mem: PairMemory) -> torch.Tensor:
    return torch.from_numpy(getattr(mem, name))


class RingModel:
    """Independent model of the masked ring buffer: slots, serial numbers, activity."""

    def __init__(self, m: int, n: int) -> None:
        self.m = m
        self.S = torch.zeros(m, n, dtype=DTYPE)
        self.Y = torch.zeros(m, n, dtype=DTYPE)
        self.serial = [-1] * m
        self.active = [False] * m
        self.next_serial = 0

    def slot(self) -> int:
        for i in range(self.m):
            if not self.active[i]:
                return i
        return min(range(self.m), key=lambda i: self.serial[i])

    def push(self, s: torch.Tensor, y: torch.Tensor, store: bool) -> int:
        k = self.slot()
        if store:
            self.S[k], self.Y[k] = s, y
            self.serial[k] = self.next_serial
            self.active[k] = True
            self.next_serial += 1
        return k

    def keep(self, mask: list[bool]) -> None:
        self.active = [a and b for a, b in zip(self.active, mask, strict=True)]

    def time_order(self) -> list[int]:
        return sorted((i for i in range(self.m) if self.active[i]), key=lambda i: self.serial[i])


def assert_matches(mem: PairMemory, ref: RingModel) -> None:
    torch.testing.assert_close(mem.S, ref.S, rtol=0, atol=0)
    torch.testing.assert_close(mem.Y, ref.Y, rtol=0, atol=0)
    active = [i for i in range(ref.m) if ref.active[i]]
    # serial of inactive slots is irrelevant after keep/clear; compare the active ones and the mask.
    assert mem.active.tolist() == ref.active
    assert [int(mem.serial[i]) for i in active] == [ref.serial[i] for i in active]
    assert int(mem.next_serial) == ref.next_serial
    assert int(mem.count()) == len(active)
    # Gram matrices equal the products recomputed from the buffer rows (all slots, active or not).
    # (inactive slots: whatever they held when they were active; compare the active block)
    ix = np.ix_(active, active)
    for name, ref_gram in (("SS", ref.S @ ref.S.T), ("SY", ref.S @ ref.Y.T), ("YY", ref.Y @ ref.Y.T)):
        torch.testing.assert_close(
            torch.from_numpy(getattr(mem, name)[ix]), ref_gram[ix], rtol=1e-13, atol=1e-13
        )


def test_many_pushes_with_wraparound_skips_keep_and_clear() -> None:
    gen = torch.Generator().manual_seed(0)
    m, n = 4, 7
    mem = PairMemory(m, n, dtype=DTYPE, device="cpu")
    ref = RingModel(m, n)
    assert_matches(mem, ref)
    for step in range(60):
        s = torch.randn(n, generator=gen, dtype=DTYPE)
        y = torch.randn(n, generator=gen, dtype=DTYPE)
        store = bool(torch.rand((), generator=gen) < 0.75)
        expected_slot = ref.slot()
        slot = push(mem, s, y, store)
        ref.push(s, y, store)
        if store:
            assert int(slot) == expected_slot
        assert_matches(mem, ref)
        if step % 11 == 10:  # drop a random subset (rank repair / forgetting use keep)
            mask = (torch.rand(m, generator=gen) < 0.5).tolist()
            mem.keep(np.array(mask))
            ref.keep(mask)
            assert_matches(mem, ref)
        if step == 37:
            mem.clear()
            ref.keep([False] * m)
            assert_matches(mem, ref)
    assert ref.next_serial > 2 * m  # the buffer wrapped several times


def test_choosing_a_slot_changes_nothing() -> None:
    gen = torch.Generator().manual_seed(1)
    m, n = 3, 5
    mem = PairMemory(m, n, dtype=DTYPE, device="cpu")
    for _ in range(5):
        push(mem, torch.randn(n, generator=gen, dtype=DTYPE), torch.randn(n, generator=gen, dtype=DTYPE))
    before = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in mem.state_dict().items()}
    assert mem.next_slot() == 2  # the oldest pair (serial 2) sits in slot 2
    for k, v in mem.state_dict().items():
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, before[k]), k
        else:
            assert v == before[k]


def test_slot_choice_empty_first_then_oldest() -> None:
    m, n = 3, 2
    mem = PairMemory(m, n, dtype=DTYPE, device="cpu")
    one = torch.ones(n, dtype=DTYPE)
    assert [push(mem, k * one, one) for k in range(1, 4)] == [0, 1, 2]
    assert push(mem, 4 * one, one) == 0  # full: the oldest (serial 0) sits in slot 0
    assert push(mem, 5 * one, one) == 1
    # Free slot 2 (serial 2, now the oldest): the next pair takes the empty slot 2 ...
    mem.keep(np.array([True, True, False]))
    assert push(mem, 6 * one, one) == 2
    # ... then the oldest active pair is the one in slot 0 (serial 3).
    assert mem.serial.tolist() == [3, 4, 5]
    assert push(mem, 7 * one, one) == 0
    assert mem.S[:, 0].tolist() == [7.0, 5.0, 6.0]
    assert mem.serial.tolist() == [6, 4, 5]
    # Empty slot chosen over an older active pair even when it is not the first slot.
    mem.keep(np.array([True, False, True]))
    assert push(mem, 8 * one, one) == 1


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
    mem.keep(np.array([True, False, True]))
    buf = io.BytesIO()
    torch.save(mem.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    other = PairMemory(m, n, dtype=DTYPE, device="cpu")
    other.load_state_dict(state)

    def same(a: PairMemory, b: PairMemory) -> None:
        assert torch.equal(a.SY_buf, b.SY_buf) and a.next_serial == b.next_serial
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


@pytest.mark.parametrize("memory", [0, -1, True, 2.0])
def test_bad_memory_raises(memory) -> None:
    with pytest.raises(ValueError, match="memory"):
        PairMemory(memory, 3, dtype=DTYPE, device="cpu")
