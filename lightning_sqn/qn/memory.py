"""Fixed-size ring buffer of curvature pairs (s_i, y_i): vectors on the device, Gram matrices on the host.

Both limited-memory matrices (:mod:`~lightning_sqn.qn.lsr1`, :mod:`~lightning_sqn.qn.lbfgs`) keep their
pairs here.

* On the device: ``SY_buf``, a ``(2m, n)`` block whose first m rows are S^T (the s_i) and last m rows
  are Y^T, so [S Y]^T V is one pass over the buffer (:meth:`project`) and a combination
  beta v + [S Y] c one more (:meth:`combine`). Below it, in the same allocation, sit the ``work`` rows
  of the optimizer's step: g (the gradient at x_k, right after the pairs, so that c_g g + [S Y] c is
  one product over the first 2m + 1 rows, :meth:`combine_work`), then the next pair's y, s and r.
  :meth:`step_products` gives [S Y]^T [g y] and the inner products of the work rows.
* On the host, in NumPy float64: ``SS = S^T S``, ``SY = S^T Y`` (``SY[i, j] = s_i^T y_j``) and
  ``YY = Y^T Y`` (m x m), updated by one row and column per stored pair from the products of the new
  pair with the stored ones (which the caller reads in the same transfer as its other numbers), never
  recomputed from scratch; ``serial[i]``, the insertion number of slot i, and ``active[i]``, whether
  slot i holds a pair in use. Time order (needed for the strictly lower triangle L of S^T Y in the
  compact forms) is read from ``serial``; the slots themselves are never permuted.

Every row is stored in K = ceil(n / ``BLOCK``) blocks of equal length L (at most ``BLOCK`` entries;
the row is padded with fewer than K zeros, which stay zero), and the step's passes are batched products
over the blocks (``torch.bmm`` on a ``(K, rows, L)`` view): each block of all rows is read once while it
is in cache, and the batches run in parallel. On the CPU that streams the buffer about twice as fast as
one matrix-vector product per right-hand side (``docs/benchmarks.md``); on a GPU it is one batched
kernel.

A new pair overwrites an empty slot if there is one, else the oldest pair (Alg. 1 lines 27-29 of
Ramamurthy & Duffy: append, then drop the first column when more than m pairs are held).
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
    """Ring buffer of m curvature pairs of dimension n.

    Args:
        memory: m, the number of pairs kept (m >= 1).
        n: the dimension of each pair.
        dtype: dtype of the device buffer (the Gram matrices are float64 on the host).
        device: device of the buffer (the parameters' device).
        work_rows: n-vector rows kept below the pairs for the optimizer's step (see ``work``).
    """

    def __init__(
        self, memory: int, n: int, *, dtype: torch.dtype, device: torch.device | str, work_rows: int = 0
    ) -> None:
        if not isinstance(memory, int) or isinstance(memory, bool) or memory < 1:
            raise ValueError(f"memory must be an integer >= 1, got {memory!r}")
        self.m = memory
        self.n = n
        K = -(-n // BLOCK)  # blocks per row, then the shortest block length that covers n (< K padding)
        L = -(-n // K)
        self._padded = torch.zeros(2 * memory + work_rows, K * L, dtype=dtype, device=device)
        kw = {"dtype": dtype, "device": device}
        # staging buffer of the step's one read: f, per-block [S Y]^T [g y], per-block W W^T
        self._stage = torch.zeros(1 + K * (4 * memory + work_rows * work_rows), **kw)
        self._coef = torch.zeros(2 * memory + 1, **kw)
        self._make_views()
        self.SS = np.zeros((memory, memory))
        self.SY = np.zeros((memory, memory))
        self.YY = np.zeros((memory, memory))
        self.serial = np.full(memory, -1, dtype=np.int64)
        self.active = np.zeros(memory, dtype=bool)
        self.next_serial = 0
        #: during a step's transaction: slot -> row of ``_backup`` holding the slot's pair before the
        #: step wrote it (see :meth:`begin`); None outside a transaction
        self._journal: dict[int, int] | None = None
        self._backup: list[Tensor] | None = None

    def _make_views(self) -> None:
        """The views of ``_padded``, ``_stage`` and ``_coef`` the passes use (made once; rebuilt after
        unpickling, which would otherwise turn views into copies)."""
        memory, n, m2 = self.m, self.n, 2 * self.m
        rows, KL = self._padded.shape
        K = self._blocks = -(-n // BLOCK)
        L = KL // K
        work_rows = rows - m2
        self._rows = self._padded[:, :n]
        self.SY_buf = self._rows[:m2]
        #: the optimizer's step rows (g first; see the module docstring)
        self.work = self._rows[m2:]
        self.work_rows = self.work.unbind(0)  #: views of the single work rows (no op per access)
        self._SY_t = self.SY_buf.t()
        self._slot_rows = [(self.SY_buf[j], self.SY_buf[memory + j]) for j in range(memory)]
        # (K, rows, L) views of the blocks for the batched passes
        blocks = self._padded.view(rows, K, L).transpose(0, 1)
        self._pair_blocks = blocks[:, :m2]
        self._pair_g_blocks = blocks[:, : m2 + 1]
        self._work_blocks = blocks[:, m2:]
        self._gy_blocks = blocks[:, m2 : m2 + 2]
        self._pair_blocks_t = self._pair_blocks.transpose(1, 2)
        self._work_blocks_t = self._work_blocks.transpose(1, 2)
        self._row_blocks = [self._padded[i].view(K, 1, L) for i in range(rows)]
        self._stage_f = self._stage[0]
        self._stage_P = self._stage[1 : 1 + K * 2 * m2].view(K, 2, m2)
        self._stage_W = self._stage[1 + K * 2 * m2 :].view(K, work_rows, work_rows)
        self._coef_blocks = self._coef.view(1, 1, m2 + 1).expand(K, 1, m2 + 1)

    _VIEWS = (
        "_rows",
        "SY_buf",
        "work",
        "work_rows",
        "_SY_t",
        "_slot_rows",
        "_pair_blocks",
        "_pair_g_blocks",
        "_work_blocks",
        "_gy_blocks",
        "_pair_blocks_t",
        "_work_blocks_t",
        "_row_blocks",
        "_stage_f",
        "_stage_P",
        "_stage_W",
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
    def slot_s(self, j: int) -> Tensor:
        """s_j, the s row of slot j (a view made once)."""
        return self._slot_rows[j][0]

    @property
    def S(self) -> Tensor:
        """S^T as an (m, n) view: row i is s_i (inactive rows hold stale or zero data)."""
        return self.SY_buf[: self.m]

    @property
    def Y(self) -> Tensor:
        """Y^T as an (m, n) view: row i is y_i."""
        return self.SY_buf[self.m :]

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
        """[S Y]^T [S Y] as a (2m, 2m) float64 matrix from the stored blocks (no pass over the buffer)."""
        return np.block([[self.SS, self.SY], [self.SY.T, self.YY]])

    # ---------------------------------------------------------------- products
    def project(self, v: Tensor) -> Tensor:
        """[S Y]^T v: (2m,) for v of shape (n,), or (2m, k) for (n, k). One pass over the buffer."""
        return self.SY_buf @ v

    def step_products(self, f: Tensor) -> Tensor:
        """What a step reads after its first evaluation, in one flat device tensor: ``f``, then per block
        [S Y]^T [w_0 w_1] (the gradient and the staged y: one pass over the pairs), then per block the
        inner products W W^T of the work rows. The host sums the blocks (:meth:`sum_step_products`), in
        float64. Needs ``work_rows >= 2``."""
        self._stage_f.copy_(f)
        # (K, 2, L) @ (K, L, 2m): about twice as fast on the CPU as the transposed (K, 2m, L) @ (K, L, 2)
        torch.bmm(self._gy_blocks, self._pair_blocks_t, out=self._stage_P)
        torch.bmm(self._work_blocks, self._work_blocks_t, out=self._stage_W)
        return self._stage

    def sum_step_products(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """([S Y]^T [w_0 w_1] (2m, 2), W W^T (k, k)) from the values of :meth:`step_products` (without f)."""
        K, m2, k = self._blocks, 2 * self.m, self.work.shape[0]
        P = values[: K * m2 * 2].reshape(K, 2, m2).sum(0).T
        D = values[K * m2 * 2 :].reshape(K, k, k).sum(0)
        return P, D

    def combine_work(self, c: np.ndarray, c_g: float, row: int) -> Tensor:
        """c_g g + [S Y] c into work row ``row``, with g the first work row: one batched product over
        the first 2m + 1 rows of the buffer (the pairs and g). Returns that row."""
        self._coef.copy_(to_device(np.append(c, c_g), self._coef))
        torch.bmm(self._coef_blocks, self._pair_g_blocks, out=self._row_blocks[2 * self.m + row])
        return self.work_rows[row]

    def combine(
        self,
        c: np.ndarray | Tensor,
        v: Tensor | None = None,
        *,
        beta: float = 1.0,
        out: Tensor | None = None,
    ) -> Tensor:
        """beta v + [S Y] c for c of shape (2m,) (or (2m, k) with v (n, k)). One pass over the buffer.

        ``c`` may be a host array (sent in one small copy). Coefficients of inactive slots must be zero.
        """
        if not isinstance(c, Tensor):
            c = to_device(c, self.SY_buf)
        A = self._SY_t
        if v is None:
            return torch.matmul(A, c, out=out) if out is not None else A @ c
        op = torch.addmv if c.ndim == 1 else torch.addmm
        return op(v, A, c, beta=beta, out=out) if out is not None else op(v, A, c, beta=beta)

    # ---------------------------------------------------------------- updates
    def next_slot(self) -> int:
        """The slot a new pair goes to: an empty one if any, else the oldest active pair's."""
        free = np.flatnonzero(~self.active)
        return int(free[0]) if free.size else int(np.argmin(self.serial))

    def push(
        self, s: Tensor, y: Tensor, Ps: np.ndarray, Py: np.ndarray, ss: float, sy: float, yy: float
    ) -> int:
        """Store the pair (s, y) in :meth:`next_slot` and return that slot.

        Args:
            s, y: the pair, shape (n,), on the device (written into the buffer: two row copies).
            Ps, Py: [S Y]^T s and [S Y]^T y over the buffer *before* the write, (2m,) float64.
            ss, sy, yy: s^T s, s^T y, y^T y.
        """
        m, j = self.m, self.next_slot()
        # Row/column j of the Gram blocks: products with the new pair; its own products on the diagonal.
        self.SS[j, :] = self.SS[:, j] = Ps[:m]
        self.SY[j, :] = Ps[m:]  # SY[j, i] = s^T y_i
        self.SY[:, j] = Py[:m]  # SY[i, j] = s_i^T y
        self.YY[j, :] = self.YY[:, j] = Py[m:]
        self.SS[j, j], self.SY[j, j], self.YY[j, j] = ss, sy, yy
        s_row, y_row = self._slot_rows[j]
        if self._journal is not None and j not in self._journal:
            self._save_slot(j)
        s_row.copy_(s)
        y_row.copy_(y)
        self.serial[j] = self.next_serial
        self.active[j] = True
        self.next_serial += 1
        return j

    def pair_products(
        self, s: Tensor, y: Tensor
    ) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
        """([S Y]^T s, [S Y]^T y, (s^T s, s^T y, y^T y)) of a candidate pair, in one pass and one read."""
        P = self.project(torch.stack((s, y), 1))
        h = to_host(P, s @ s, s @ y, y @ y)
        m2 = 2 * self.m
        P_host = h[: 2 * m2].reshape(m2, 2)
        return P_host[:, 0], P_host[:, 1], (float(h[-3]), float(h[-2]), float(h[-1]))

    def append(self, s: Tensor, y: Tensor) -> int:
        """Store (s, y) unconditionally (no skip rule, no rank repair); for tests and tools that write
        pairs directly. Returns the slot."""
        Ps, Py, dots = self.pair_products(s, y)
        return self.push(s, y, Ps, Py, *dots)

    def keep(self, mask: np.ndarray) -> None:
        """Deactivate every pair not in ``mask`` (bool (m,)); used by rank repair."""
        self.active &= mask

    def clear(self) -> None:
        """Forget all pairs (Alg. 1 "colDim = 0"; L-BFGS forgetting)."""
        self.active[:] = False

    # ------------------------------------------------------------ transactions
    def begin(self) -> tuple:
        """Start a step's transaction: from now on a slot is copied aside before its first overwrite
        (one copy of two rows per stored pair), and the host state is returned as the token."""
        self._journal = {}
        return (*(getattr(self, name).copy() for name in self._HOST), self.next_serial)

    def _save_slot(self, j: int) -> None:
        assert self._journal is not None
        k = len(self._journal)
        if self._backup is None or len(self._backup) <= k:  # grown on demand: one slot per L-SR1 step
            grown = torch.empty(min(2 * (k + 1), self.m), 2, self.n, dtype=self.dtype, device=self.device)
            if self._backup is not None:
                grown[: len(self._backup)].copy_(torch.stack(self._backup))
            self._backup = list(grown.unbind(0))  # views made once: no view op per step
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
        *host, self.next_serial = token
        for name, value in zip(self._HOST, host, strict=True):
            setattr(self, name, value)
        self._journal = None

    # ------------------------------------------------------------------ state
    _HOST = ("SS", "SY", "YY", "serial", "active")

    def state_dict(self) -> dict[str, Tensor | int]:
        out: dict[str, Tensor | int] = {"SY_buf": self.SY_buf}
        out.update({name: torch.from_numpy(getattr(self, name).copy()) for name in self._HOST})
        out.update(next_serial=self.next_serial, memory=self.m, n=self.n)
        return out

    def check_state(self, state: dict) -> None:
        """ValueError unless ``state`` is a complete pair memory of this shape (changes nothing)."""
        require_keys("pair-memory", state, ("SY_buf", *self._HOST, "next_serial", "memory", "n"))
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

    def load_state_dict(self, state: dict) -> None:
        self.check_state(state)
        self.SY_buf.copy_(state["SY_buf"].to(device=self.device, dtype=self.dtype))  # type: ignore[union-attr]
        for name in self._HOST:
            value = state[name]
            arr = value.numpy(force=True) if isinstance(value, Tensor) else np.asarray(value)
            setattr(self, name, arr.astype(getattr(self, name).dtype, copy=True))
        self.next_serial = int(state["next_serial"])
