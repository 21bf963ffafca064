"""Fixed-size ring buffer of curvature pairs (s_i, y_i) with incrementally updated Gram matrices.

Both limited-memory matrices (:mod:`~lightning_sqn.qn.lsr1`, :mod:`~lightning_sqn.qn.lbfgs`) keep their
pairs here. The buffer has a fixed shape, so storing, skipping and dropping pairs are *masked* device
operations and never synchronise with the host:

* ``SY_buf`` is one ``(2m, n)`` tensor whose first m rows are S^T (the s_i) and last m rows are Y^T, so
  [S Y]^T v is one matrix-vector product and a combination S a + Y b is one more.
* ``SS = S^T S``, ``SY = S^T Y`` (``SY[i, j] = s_i^T y_j``) and ``YY = Y^T Y`` are m x m and updated by one
  row and column per stored pair (one ``(2m, n) @ (n, 2)`` product), never recomputed from scratch.
* ``serial[i]`` is the insertion number of slot i, ``active[i]`` whether slot i holds a pair in use.
  Time order (needed for the strictly lower triangle L of S^T Y in the compact forms) is read from
  ``serial``; the slots themselves are never permuted.

A new pair overwrites an empty slot if there is one, else the oldest pair (Alg. 1 lines 27-29 of
Ramamurthy & Duffy: append, then drop the first column when more than m pairs are held).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_sqn._device import host_reads_are_free, one_hot_mask


class PairMemory:
    """Ring buffer of m curvature pairs of dimension n.

    Args:
        memory: m, the number of pairs kept (m >= 1).
        n: the dimension of each pair.
        dtype: dtype of the buffers.
        device: device of the buffers (the parameters' device).
    """

    def __init__(self, memory: int, n: int, *, dtype: torch.dtype, device: torch.device | str) -> None:
        if not isinstance(memory, int) or isinstance(memory, bool) or memory < 1:
            raise ValueError(f"memory must be an integer >= 1, got {memory!r}")
        self.m = memory
        self.n = n
        kw = {"dtype": dtype, "device": device}
        self.SY_buf = torch.zeros(2 * memory, n, **kw)
        self.SS = torch.zeros(memory, memory, **kw)
        self.SY = torch.zeros(memory, memory, **kw)
        self.YY = torch.zeros(memory, memory, **kw)
        self.serial = torch.full((memory,), -1, dtype=torch.long, device=device)
        self.active = torch.zeros(memory, dtype=torch.bool, device=device)
        self.next_serial = torch.zeros((), dtype=torch.long, device=device)

    # ------------------------------------------------------------------ views
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

    def count(self) -> Tensor:
        """Number of active pairs (0-dim int64 tensor)."""
        return self.active.sum()

    def later(self) -> Tensor:
        """(m, m) bool: ``later[i, j]`` is True when pair i was stored after pair j (both active).

        L = S^T Y masked by ``later`` is the strictly lower triangle of S^T Y in time order.
        """
        a = self.active
        return (self.serial[:, None] > self.serial[None, :]) & a[:, None] & a[None, :]

    def age_rank(self) -> Tensor:
        """(m,) int64: 0 for the oldest active pair, 1 for the next, ...; inactive slots get m."""
        a = self.active
        older = (self.serial[None, :] < self.serial[:, None]) & a[None, :]
        return torch.where(a, older.sum(1), torch.full_like(self.serial, self.m))

    # ---------------------------------------------------------------- products
    def project(self, v: Tensor) -> Tensor:
        """[S Y]^T v: (2m,) for v of shape (n,), or (2m, k) for (n, k). One pass over the buffer."""
        return self.SY_buf @ v

    def combine(self, c: Tensor, v: Tensor | None = None, out: Tensor | None = None) -> Tensor:
        """v + [S Y] c for c of shape (2m,) (or (2m, k), v (n, k)). One pass over the buffer.

        Coefficients of inactive slots must be zero (callers mask them).
        """
        if v is None:
            return torch.matmul(self.SY_buf.t(), c, out=out) if out is not None else self.SY_buf.t() @ c
        if c.ndim == 1:
            return (
                torch.addmv(v, self.SY_buf.t(), c, out=out)
                if out is not None
                else torch.addmv(v, self.SY_buf.t(), c)
            )
        return (
            torch.addmm(v, self.SY_buf.t(), c, out=out)
            if out is not None
            else torch.addmm(v, self.SY_buf.t(), c)
        )

    # ---------------------------------------------------------------- updates
    def pair_products(self, s: Tensor, y: Tensor) -> Tensor:
        """[S Y]^T [s y]: (2m, 2) inner products of a candidate pair with the stored pairs.

        Two matrix-vector products: a (2m, n) @ (n, 2) product with the column-major right-hand side
        that stacking would create is about twice as slow on CPU BLAS.
        """
        return torch.stack((self.SY_buf @ s, self.SY_buf @ y), dim=1)

    def gram(self) -> Tensor:
        """[S Y]^T [S Y] as a (2m, 2m) matrix, from the stored Gram blocks (no pass over the buffer)."""
        return torch.cat((torch.cat((self.SS, self.SY), 1), torch.cat((self.SY.t(), self.YY), 1)), 0)

    def push(
        self,
        s: Tensor,
        y: Tensor,
        store: Tensor,
        products: Tensor | None = None,
        dots: tuple[Tensor, Tensor, Tensor] | None = None,
    ) -> Tensor:
        """Store the pair (s, y) where ``store`` (0-dim bool tensor) is True; otherwise change nothing.

        Args:
            s, y: the candidate pair, shape (n,).
            store: whether to store it (decided on the device by the caller's skip rule).
            products: ``pair_products(s, y)`` if the caller already computed it.
            dots: (s^T s, s^T y, y^T y) if the caller already computed them.

        Returns:
            The slot index written (0-dim int64), meaningful only where ``store`` is True.
        """
        P = self.pair_products(s, y) if products is None else products
        m = self.m
        # Slot: an empty one if any (serial -1 sorts first), else the oldest active pair.
        slot = torch.where(self.active, self.serial, torch.full_like(self.serial, -1)).argmin()
        onehot = one_hot_mask(slot, m) & store
        # Row/column `slot` of the Gram matrices: products with the new pair, its own inner products on
        # the diagonal. Entries of other rows/columns are left as they are.
        ss, sy, yy = (s @ s, s @ y, y @ y) if dots is None else dots
        Ss, Sy, Ys, Yy = P[:m, 0], P[:m, 1], P[m:, 0], P[m:, 1]
        self._set_row_col(self.SS, onehot, Ss, Ss, ss)
        self._set_row_col(self.SY, onehot, Ys, Sy, sy)  # SY[slot, j] = s^T y_j, SY[i, slot] = s_i^T y
        self._set_row_col(self.YY, onehot, Yy, Yy, yy)
        if host_reads_are_free(self.SY_buf.device):
            # Reading a CPU tensor costs no device synchronisation: write the rows only when stored.
            if bool(store):
                j = int(slot)
                self.SY_buf[j].copy_(s)
                self.SY_buf[j + m].copy_(y)
        else:
            idx = slot.view(1)
            for rows, v in ((self.S, s), (self.Y, y)):
                rows.index_copy_(0, idx, torch.where(store, v, rows.index_select(0, idx)[0]).view(1, -1))
        self.serial.copy_(torch.where(onehot, self.next_serial, self.serial))
        self.active |= onehot
        self.next_serial += store.long()
        return slot

    @staticmethod
    def _set_row_col(G: Tensor, onehot: Tensor, row: Tensor, col: Tensor, diag: Tensor) -> None:
        """G[k, :] = row, G[:, k] = col, G[k, k] = diag for the slot k marked in ``onehot`` (if any)."""
        r = onehot[:, None]
        c = onehot[None, :]
        new = torch.where(r, row[None, :], G)
        new = torch.where(c, col[:, None], new)
        new = torch.where(r & c, diag, new)
        G.copy_(new)

    def keep(self, mask: Tensor) -> None:
        """Deactivate every pair not in ``mask`` (bool (m,)); used by rank repair and forgetting."""
        self.active &= mask

    def clear(self) -> None:
        """Forget all pairs (Alg. 1 "colDim = 0"; L-BFGS forgetting)."""
        self.active.zero_()

    def drop_oldest_candidates(self) -> Tensor:
        """(m + 1, m) bool: row k is the active mask after dropping the k oldest active pairs."""
        k = torch.arange(self.m + 1, device=self.device)[:, None]
        return self.active[None, :] & (self.age_rank()[None, :] >= k)

    # ------------------------------------------------------------------ state
    _TENSORS = ("SY_buf", "SS", "SY", "YY", "serial", "active", "next_serial")

    def state_dict(self) -> dict[str, Tensor | int]:
        out: dict[str, Tensor | int] = {name: getattr(self, name) for name in self._TENSORS}
        out["memory"] = self.m
        out["n"] = self.n
        return out

    def load_state_dict(self, state: dict[str, Tensor | int]) -> None:
        if state["memory"] != self.m or state["n"] != self.n:
            raise ValueError(
                f"pair memory of shape (m={state['memory']}, n={state['n']}) cannot be loaded into "
                f"(m={self.m}, n={self.n}); build the optimizer with the same memory and parameters"
            )
        for name in self._TENSORS:
            cur = getattr(self, name)
            cur.copy_(state[name].to(device=cur.device, dtype=cur.dtype))  # type: ignore[union-attr]
