"""Curvature pairs (s_i, y_i): vectors in one device buffer, their Gram matrix on the host.

Both limited-memory matrices (:mod:`~lightning_sqn.qn.lsr1`, :mod:`~lightning_sqn.qn.lbfgs`) keep their
pairs here.

* **Slots.** A memory of m pairs has m + 1 slots. At most m hold active pairs; one inactive slot is the
  *spare* (:attr:`PairMemory.spare`), where the next pair is written before it is decided on. Storing
  it (:meth:`PairMemory.push`) activates the spare and, when that makes m + 1 active pairs, deactivates
  the oldest, whose slot becomes the new spare (Alg. 1 lines 27-29 of Ramamurthy & Duffy: append,
  then drop the first column when more than m pairs are held). Storing a pair therefore moves no
  vector: it changes host bookkeeping only, and a refused pair simply stays in the spare, to be
  overwritten.
* **On the device**: one ``(2(m + 1) + 2, n)`` buffer. Rows ``0..m`` are the slots' s vectors,
  rows ``m+1..2m+1`` their y vectors (together ``SY_buf``, so [S Y]^T v is one pass over it), then
  three rows of the optimizer's step: :attr:`g` (the gradient at x_k, right after the pairs),
  :attr:`d` (the step or direction) and :attr:`g_trial` (the gradient at the trial point). A step
  makes two passes over the buffer:

  1. :meth:`step_products`: [y_spare g]^T [S Y g], the products of the new gradient and of the staged
     pair's y with every slot and with g, in one batched product (f travels in the same read);
  2. :meth:`combine_step`: d = c_g g + [S Y] c over the slots and g, written into the d row.

  Every other inner product a step needs (s^T s of the staged pair, [S Y]^T s, the SR1 residual's
  products) follows on the host from the coefficients s was formed with and the Gram matrix.
* **On the host**, in NumPy float64: ``G = [S Y]^T [S Y]`` over the slots (``SS``, ``SY``
  (``SY[i, j] = s_i^T y_j``) and ``YY`` are views of its blocks), updated by one row and column per
  stored pair from the products of that pair, never recomputed from scratch; ``serial[i]``, the
  insertion number of slot i, and ``active[i]``. Time order (needed for the strictly lower triangle
  L of S^T Y in the compact forms) is read from ``serial``. Entries of inactive slots are stale and
  are never used: every coefficient vector is zero there, and products of inactive slots are masked
  (:meth:`PairMemory.mask`) before they reach the algebra. A pair whose products are not finite is
  refused when it is offered and its rows are cleared then (0 x NaN would be NaN in a pass); until its
  offer at the start of the next step it sits in the spare, so a product with the matrix taken in
  between, outside the optimizer's step, is NaN, never silently wrong.

Every row is stored in K = ceil(n / ``BLOCK``) blocks of equal length L (at most ``BLOCK`` entries;
the row is padded with fewer than K zeros, which stay zero), and both passes are batched products over
the blocks (``torch.bmm`` on a ``(K, rows, L)`` view): each block of all rows is read once while it is
in cache, and the batches run in parallel. On the CPU that streams the buffer about twice as fast as
one matrix-vector product per right-hand side (``docs/benchmarks.md``); on a GPU it is one batched
kernel.

Transactions (:meth:`PairMemory.begin`): a step's device writes into the pair rows are the staging of
its own pair into the spare, the last thing a step does, so undoing a step restores the host state
only. Pairs written mid-step by :meth:`PairMemory.write_spare` (sampled quasi-Newton refreshes) copy
the rows they overwrite aside first.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from lightning_sqn._device import to_device, to_host
from lightning_sqn._state import check_tensor, require_keys

#: entries per block of the batched passes (a block of all rows then fits in a core's L2 cache)
BLOCK = 16384


class PairMemory:
    """m curvature pairs of dimension n in m + 1 slots (one spare).

    Args:
        memory: m, the number of pairs kept (m >= 1).
        n: the dimension of each pair.
        dtype: dtype of the device buffer (the Gram matrix is float64 on the host).
        device: device of the buffer (the parameters' device).
    """

    def __init__(self, memory: int, n: int, *, dtype: torch.dtype, device: torch.device | str) -> None:
        if not isinstance(memory, int) or isinstance(memory, bool) or memory < 1:
            raise ValueError(f"memory must be an integer >= 1, got {memory!r}")
        self.m = memory
        self.slots = memory + 1
        self.n = n
        K = -(-n // BLOCK)  # blocks per row, then the shortest block length that covers n (< K padding)
        L = -(-n // K)
        width = 2 * self.slots + 1  # the pair rows and g: the rows both passes run over
        self._padded = torch.zeros(width + 2, K * L, dtype=dtype, device=device)
        kw = {"dtype": dtype, "device": device}
        # f, per block [y_spare g]^T [S Y g] (pass 1), per block [d g_trial]^T [d g_trial] (staging)
        self._stage = torch.zeros(1 + K * 2 * width + K * 4, **kw)
        self._coef = torch.zeros(width, **kw)
        self.G = np.zeros((2 * self.slots, 2 * self.slots))
        self.serial = np.full(self.slots, -1, dtype=np.int64)
        self.active = np.zeros(self.slots, dtype=bool)
        self.spare = 0
        self.next_serial = 0
        #: during a transaction: slot -> row of ``_backup`` holding the slot's pair before
        #: :meth:`write_spare` or :meth:`write_slots` overwrote it; None outside a transaction
        self._journal: dict[int, int] | None = None
        self._backup: Tensor | None = None
        self._make_views()

    def _make_views(self) -> None:
        """The views of the buffers the passes use (made once; rebuilt after unpickling, which would
        otherwise turn views into copies)."""
        S, n = self.slots, self.n
        rows, KL = self._padded.shape
        K = self._blocks = -(-n // BLOCK)
        L = KL // K
        width = 2 * S + 1
        self._rows = self._padded[:, :n]
        self.SY_buf = self._rows[: 2 * S]
        self.g = self._rows[2 * S]  #: the gradient row of the optimizer's step
        self.d = self._rows[2 * S + 1]  #: the step (or direction) row
        self.g_trial = self._rows[2 * S + 2]  #: the gradient at the trial point
        self._SY_t = self.SY_buf.t()
        self._slot_rows = [(self._rows[j], self._rows[S + j]) for j in range(S)]
        blocks = self._padded.view(rows, K, L).transpose(0, 1)
        self._pass_blocks = blocks[:, :width]  # (K, 2S + 1, L): the slots and g
        self._pass_blocks_t = self._pass_blocks.transpose(1, 2)
        self._d_block = self._padded[width].view(K, 1, L)
        # [y_j g] as a (K, 2, L) strided view for each possible spare j (rows S + j and 2S)
        base = self._padded.storage_offset()
        self._spare_g_blocks = [
            torch.as_strided(self._padded, (K, 2, L), (L, (S - j) * KL, 1), base + (S + j) * KL)
            for j in range(S)
        ]
        self._dg_blocks = blocks[:, width : width + 2]  # (K, 2, L): d and g_trial
        self._dg_blocks_t = self._dg_blocks.transpose(1, 2)
        self._stage_f = self._stage[0]
        self._stage_P = self._stage[1 : 1 + K * 2 * width].view(K, 2, width)
        self._stage_pair = self._stage[1 + K * 2 * width :].view(K, 2, 2)
        self._coef_blocks = self._coef.view(1, 1, width).expand(K, 1, width)

    _VIEWS = (
        "_rows",
        "SY_buf",
        "g",
        "d",
        "g_trial",
        "_SY_t",
        "_slot_rows",
        "_pass_blocks",
        "_pass_blocks_t",
        "_d_block",
        "_spare_g_blocks",
        "_dg_blocks",
        "_dg_blocks_t",
        "_stage_f",
        "_stage_P",
        "_stage_pair",
        "_coef_blocks",
    )

    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in self._VIEWS}
        state["_backup"] = None  # scratch of a step's transaction
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._make_views()

    # ------------------------------------------------------------------ views
    @property
    def S(self) -> Tensor:
        """S^T as an (m + 1, n) view over the slots: row i is s_i (inactive rows hold stale data)."""
        return self.SY_buf[: self.slots]

    @property
    def Y(self) -> Tensor:
        """Y^T as an (m + 1, n) view: row i is y_i."""
        return self.SY_buf[self.slots :]

    @property
    def SS(self) -> np.ndarray:
        """S^T S over the slots (a view of :attr:`G`)."""
        return self.G[: self.slots, : self.slots]

    @property
    def SY(self) -> np.ndarray:
        """S^T Y over the slots, ``SY[i, j] = s_i^T y_j`` (a view of :attr:`G`)."""
        return self.G[: self.slots, self.slots :]

    @property
    def YY(self) -> np.ndarray:
        """Y^T Y over the slots (a view of :attr:`G`)."""
        return self.G[self.slots :, self.slots :]

    def spare_rows(self) -> tuple[Tensor, Tensor]:
        """(s, y) rows of the spare slot, where the next pair is written."""
        return self._slot_rows[self.spare]

    def slot_rows(self, j: int) -> tuple[Tensor, Tensor]:
        """(s_j, y_j), the rows of slot j (views made once)."""
        return self._slot_rows[j]

    @property
    def dtype(self) -> torch.dtype:
        return self.SY_buf.dtype

    @property
    def device(self) -> torch.device:
        return self.SY_buf.device

    def count(self) -> int:
        """Number of active pairs."""
        return int(self.active.sum())

    def gram(self) -> np.ndarray:
        """[S Y]^T [S Y] over the slots, (2(m + 1), 2(m + 1)) float64 (entries of inactive slots stale)."""
        return self.G

    def mask(self, proj: np.ndarray) -> np.ndarray:
        """``proj`` (shape (2(m + 1),) or (2(m + 1), k): products with [S Y]) with the entries of inactive
        slots set to zero (they may hold anything, even NaN from a refused pair in the spare)."""
        keep = np.concatenate((self.active, self.active))
        return np.where(keep if proj.ndim == 1 else keep[:, None], proj, 0.0)

    # ---------------------------------------------------------------- products
    def project(self, v: Tensor) -> Tensor:
        """[S Y]^T v over the slots: (2(m + 1),) for v of shape (n,), or (2(m + 1), k) for (n, k).
        One pass over the buffer; entries of inactive slots are meaningless (see :meth:`mask`)."""
        return self.SY_buf @ v

    def step_products(self, f: Tensor) -> Tensor:
        """Pass 1 of a step, with what the step reads after its first evaluation, as one flat device
        tensor: ``f``, then per block [y_spare g]^T [S Y g]. The host sums the blocks
        (:meth:`sum_step_products`), in float64."""
        self._stage_f.copy_(f)
        torch.bmm(self._spare_g_blocks[self.spare], self._pass_blocks_t, out=self._stage_P)
        return self._stage

    def sum_step_products(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(y_spare^T [S Y g], g^T [S Y g], [d^T d, d^T g_trial, g_trial^T g_trial]) from the values of
        :meth:`step_products` after f; the last as :meth:`stage_products` left them."""
        K, width = self._blocks, 2 * self.slots + 1
        P = values[: K * 2 * width].reshape(K, 2, width).sum(0)
        W = values[K * 2 * width :].reshape(K, 2, 2).sum(0)
        return P[0], P[1], np.array([W[0, 0], W[0, 1], W[1, 1]])

    def stage_products(self) -> None:
        """[d g_trial]^T [d g_trial] per block into the staging buffer, where the next
        :meth:`step_products` reads it: what a staged pair's offer needs besides pass 1 (s^T s, and the
        trust region's residual products)."""
        torch.bmm(self._dg_blocks, self._dg_blocks_t, out=self._stage_pair)

    def staged_products(self) -> np.ndarray:
        """The values of :meth:`stage_products` (one read; for state dicts)."""
        return to_host(self._stage_pair).reshape(self._blocks, 2, 2).sum(0)[[0, 0, 1], [0, 1, 1]]

    def load_staged_products(self, values: np.ndarray) -> None:
        """Put staged products back (``values`` = [d^T d, d^T g_trial, g_trial^T g_trial]), as if
        :meth:`stage_products` ran."""
        W = np.zeros((self._blocks, 2, 2))
        W[0] = [[values[0], values[1]], [values[1], values[2]]]
        self._stage_pair.copy_(torch.from_numpy(W))

    def combine_step(self, c: np.ndarray, c_g: float) -> Tensor:
        """Pass 2 of a step: d = c_g g + [S Y] c into the d row (one batched product over the slots and
        g; c is zero on inactive slots). Returns the d row."""
        self._coef.copy_(to_device(np.concatenate((c, (c_g,))), self._coef))
        torch.bmm(self._coef_blocks, self._pass_blocks, out=self._d_block)
        return self.d

    def combine(
        self,
        c: np.ndarray | Tensor,
        v: Tensor | None = None,
        *,
        beta: float = 1.0,
        out: Tensor | None = None,
    ) -> Tensor:
        """beta v + [S Y] c for c of shape (2(m + 1),) (or (2(m + 1), k) with v (n, k)). One pass.

        ``c`` may be a host array (sent in one small copy). Coefficients of inactive slots must be zero.
        """
        if not isinstance(c, Tensor):
            c = to_device(c, self.SY_buf)
        A = self._SY_t
        if v is None:
            return torch.matmul(A, c, out=out) if out is not None else A @ c
        op = torch.addmv if c.ndim == 1 else torch.addmm
        return op(v, A, c, beta=beta, out=out) if out is not None else op(v, A, c, beta=beta)

    def pair_products(
        self, s: Tensor, y: Tensor
    ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
        """([S Y]^T s, [S Y]^T y (masked), (s^T s, s^T y, y^T y)) of a pair, in one pass and one read."""
        P = self.project(torch.stack((s, y), 1))
        h = to_host(P, s @ s, s @ y, y @ y)
        m2 = 2 * self.slots
        P_host = self.mask(h[: 2 * m2].reshape(m2, 2))
        return P_host[:, 0], P_host[:, 1], (float(h[-3]), float(h[-2]), float(h[-1]))

    # ---------------------------------------------------------------- updates
    def write_spare(self, s: Tensor, y: Tensor) -> None:
        """Copy (s, y) into the spare slot (outside a step's staging: a slot active when the transaction
        began is copied aside first)."""
        j = self.spare
        if self._journal is not None and j not in self._journal:
            self._save_slot(j)
        s_row, y_row = self._slot_rows[j]
        s_row.copy_(s)
        y_row.copy_(y)

    def write_slots(self, S: Tensor, Y: Tensor) -> None:
        """Copy the k <= m pairs (rows of S, Y) into slots 0..k-1 of an empty memory (two copies; slots
        overwritten inside a transaction are copied aside first). The host state is left to the caller."""
        k = S.shape[0]
        if k > self.m or self.count():
            raise ValueError(f"write_slots needs an empty memory and at most m = {self.m} pairs, got {k}")
        if self._journal is not None:
            for j in range(k):
                if j not in self._journal:
                    self._save_slot(j)
        self.S[:k].copy_(S)
        self.Y[:k].copy_(Y)

    def slot_gram(self) -> np.ndarray:
        """[S Y]^T [S Y] over all slots from the rows (one pass over the buffer, one read): the Gram
        matrix of freshly written pairs."""
        P = torch.bmm(self._pass_blocks[:, : 2 * self.slots], self._pass_blocks_t[:, :, : 2 * self.slots])
        return to_host(P).reshape(self._blocks, 2 * self.slots, 2 * self.slots).sum(0)

    def clear_spare(self) -> None:
        """Zero the spare's rows (after a non-finite pair was refused there: its coefficient is zero in
        every product, and 0 x NaN would still be NaN)."""
        self.clear_slot(self.spare)

    def clear_slot(self, j: int) -> None:
        """Zero the rows of inactive slot j (see :meth:`clear_spare`)."""
        self._rows[j].zero_()
        self._rows[self.slots + j].zero_()

    def push(self, Ps: np.ndarray, Py: np.ndarray, ss: float, sy: float, yy: float) -> int:
        """Store the pair held in the spare slot and return that slot.

        Args:
            Ps, Py: [S Y]^T s and [S Y]^T y over the slots, (2(m + 1),) float64 (entries of inactive
                slots are ignored).
            ss, sy, yy: s^T s, s^T y, y^T y.
        """
        S, j = self.slots, self.spare
        Ps, Py = self.mask(Ps), self.mask(Py)
        G = self.G
        # Row/column j (s) and S + j (y) of the Gram matrix: products with the other slots; then the
        # pair's own products.
        G[j, :] = G[:, j] = Ps
        G[S + j, :] = G[:, S + j] = Py
        G[j, j], G[S + j, S + j] = ss, yy
        G[j, S + j] = G[S + j, j] = sy
        self.serial[j] = self.next_serial
        self.next_serial += 1
        self.active[j] = True
        if self.active.sum() > self.m:  # drop the oldest: its slot is the new spare
            idx = self.active.nonzero()[0]
            self.spare = int(idx[np.argmin(self.serial[idx])])
            self.active[self.spare] = False
        else:
            self.spare = int((~self.active).nonzero()[0][0])
        return j

    def append(self, s: Tensor, y: Tensor) -> int:
        """Store (s, y) unconditionally (no skip rule, no rank repair); for tests and tools that write
        pairs directly. Returns the slot."""
        self.write_spare(s, y)
        Ps, Py, dots = self.pair_products(s, y)
        return self.push(Ps, Py, *dots)

    def keep(self, mask: np.ndarray) -> None:
        """Deactivate every pair not in ``mask`` (bool (m + 1,)); used by rank repair."""
        self.active &= mask

    def clear(self) -> None:
        """Forget all pairs (Alg. 1 "colDim = 0"; L-BFGS forgetting)."""
        self.active[:] = False

    # ------------------------------------------------------------ transactions
    _HOST = ("G", "serial", "active")

    def begin(self) -> tuple:
        """Start a step's transaction; the host state is the token (see the module docstring)."""
        self._journal = {}
        return (*(getattr(self, name).copy() for name in self._HOST), self.spare, self.next_serial)

    def _save_slot(self, j: int) -> None:
        assert self._journal is not None
        k = len(self._journal)
        if self._backup is None or self._backup.shape[0] <= k:  # grown on demand
            grown = torch.empty(min(2 * (k + 1), self.slots), 2, self.n, dtype=self.dtype, device=self.device)
            if self._backup is not None:
                grown[: self._backup.shape[0]].copy_(self._backup)
            self._backup = grown
        torch.stack(self._slot_rows[j], out=self._backup[k])
        self._journal[j] = k

    def commit(self) -> None:
        self._journal = None

    def rollback(self, token: tuple) -> None:
        """Undo the transaction: the overwritten slots and the host state as :meth:`begin` found them."""
        if self._journal:
            assert self._backup is not None
            for j, k in self._journal.items():
                s_row, y_row = self._slot_rows[j]
                s_row.copy_(self._backup[k][0])
                y_row.copy_(self._backup[k][1])
        *host, self.spare, self.next_serial = token
        for name, value in zip(self._HOST, host, strict=True):
            setattr(self, name, value)
        self._journal = None

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Tensor | int]:
        out: dict[str, Tensor | int] = {"SY_buf": self.SY_buf}
        out.update({name: torch.from_numpy(getattr(self, name).copy()) for name in self._HOST})
        out.update(spare=self.spare, next_serial=self.next_serial, memory=self.m, n=self.n)
        return out

    def check_state(self, state: dict) -> None:
        """ValueError unless ``state`` is a complete pair memory of this shape (changes nothing)."""
        if isinstance(state, dict) and "SS" in state and "G" not in state:
            raise ValueError(
                "this pair memory was saved by lightning_sqn before 2026-12-03 (m slots, Gram blocks SS, SY, "
                "YY); the memory now has m + 1 slots and cannot take it. Resume from a checkpoint written "
                "by this version, or restart the optimizer (its pairs are rebuilt within m steps)"
            )
        require_keys("pair-memory", state, ("SY_buf", *self._HOST, "spare", "next_serial", "memory", "n"))
        if state["memory"] != self.m or state["n"] != self.n:
            raise ValueError(
                f"pair memory of shape (m={state['memory']}, n={state['n']}) cannot be loaded into "
                f"(m={self.m}, n={self.n}); build the optimizer with the same memory and parameters"
            )
        check_tensor("the pair buffer 'SY_buf'", state["SY_buf"], self.SY_buf)
        for name in self._HOST:
            value = state[name]
            if not isinstance(value, Tensor | np.ndarray) or tuple(value.shape) != getattr(self, name).shape:
                raise ValueError(f"the pair memory's '{name}' must have shape {getattr(self, name).shape}")
        spare = state["spare"]
        if not isinstance(spare, int) or not 0 <= spare < self.slots or bool(state["active"][spare]):
            raise ValueError(f"the pair memory's spare slot must be an inactive slot in [0, {self.slots})")

    def load_state_dict(self, state: dict) -> None:
        self.check_state(state)
        self.SY_buf.copy_(state["SY_buf"].to(device=self.device, dtype=self.dtype))  # type: ignore[union-attr]
        for name in self._HOST:
            value = state[name]
            arr = value.numpy(force=True) if isinstance(value, Tensor) else np.asarray(value)
            setattr(self, name, arr.astype(getattr(self, name).dtype, copy=True))
        self.spare = int(state["spare"])
        self.next_serial = int(state["next_serial"])
