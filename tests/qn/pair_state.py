"""Snapshots of a limited-memory matrix's whole state (device buffer, host Gram blocks, gamma), shared by
the L-SR1 and L-BFGS matrix tests: a refused pair must leave all of it bitwise unchanged (except the
spare slot's rows, where a pair is written before it is decided on: they are scratch)."""

from __future__ import annotations

import numpy as np
import torch

from lightning_sqn.qn.base import LimitedMemoryMatrix


def clone_state(mat: LimitedMemoryMatrix) -> dict:
    mem = mat.memory
    out: dict = {name: getattr(mem, name).copy() for name in mem._HOST}
    out.update(
        pairs=(mem.S[mem.active].clone(), mem.Y[mem.active].clone()),
        spare=mem.spare,
        next_serial=mem.next_serial,
        gamma=mat.gamma,
    )
    return out


def assert_state_equal(mat: LimitedMemoryMatrix, state: dict) -> None:
    mem = mat.memory
    for name in mem._HOST:
        assert np.array_equal(getattr(mem, name), state[name]), name
    assert mem.spare == state["spare"]
    S, Y = state["pairs"]
    assert torch.equal(mem.S[mem.active], S) and torch.equal(mem.Y[mem.active], Y)
    assert mem.next_serial == state["next_serial"]
    assert mat.gamma == state["gamma"]
