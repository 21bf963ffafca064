"""The boundary between the device (O(n) work) and the host (all m x m algebra, in float64).

Every optimizer in this package keeps only the O(n) work on the parameters' device: passes over the
(2m, n) pair buffer, a few n-vector updates, the closure. Everything that works on m x m matrices
(Gram updates, compact-form middle matrices, eigendecompositions, the OBS subproblem, the secular
Newton iteration, rank repair, the skip rule, rho and the radius rule) runs on the host in NumPy
float64, where one small-matrix call costs about a microsecond, against a kernel launch or dispatch of
several microseconds per tiny device operation. The host receives the few dozen numbers it needs in
one read per phase (:func:`to_host`) and sends back the coefficients of the next combination
(:func:`to_device`). Decisions are therefore identical on every DDP rank by construction: the same
all-reduced inputs go through the same float64 host arithmetic.

:class:`HostReadCounter` counts, for tests and benchmarks, the ATen operations a step dispatches
(on a GPU roughly the kernels launched), the values it reads back to the host (each a synchronisation
on an accelerator) and the host-to-device copies it makes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode


def to_host(*values: torch.Tensor) -> np.ndarray:
    """The values of several tensors (any shapes) as one flat float64 NumPy array, in order, with one
    device-to-host transfer for all of them. Counted by :class:`HostReadCounter` as one host read.

    float64 holds every float16/32 value exactly, so nothing is rounded on the way.
    """
    dtype = torch.float32 if values[0].device.type == "mps" else torch.float64  # MPS has no float64
    if len(values) == 1:
        flat = values[0].reshape(-1) if values[0].dim() != 1 else values[0]
    elif all(v.dtype == values[0].dtype for v in values):
        flat = torch.cat([v.reshape(-1) for v in values])
    else:
        flat = torch.cat([v.reshape(-1).to(dtype) for v in values])
    for counter in _active_counters:
        counter.host_reads += 1
    if flat.device.type == "cpu" and flat.dtype in (torch.float32, torch.float64):
        return flat.detach().numpy().astype(np.float64)  # one copy, by NumPy (no tensor op)
    return flat.to(dtype).numpy(force=True).astype(np.float64, copy=False)


def read_to_host(*values: torch.Tensor) -> list[float]:
    """Several 0-dim tensors as Python floats, with one transfer (see :func:`to_host`)."""
    return to_host(*values).tolist()


def to_device(values: np.ndarray | Sequence[float], like: torch.Tensor) -> torch.Tensor:
    """A host array as a tensor of ``like``'s dtype on its device (one small host-to-device copy)."""
    # counted by HostReadCounter as one host write (``lift_fresh``): a copy on an accelerator
    t = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64))
    return t.to(device=like.device, dtype=like.dtype)


#: ATen operations whose output shape depends on tensor values: they read back like ``item``.
DATA_DEPENDENT_SHAPE_OPS = frozenset(
    {"nonzero", "nonzero_static", "masked_select", "unique", "_unique2", "unique_consecutive", "argwhere"}
)
#: ATen operations that read a status back inside their kernel on CUDA: the linear-algebra routines
#: without an ``_ex`` form check their LAPACK/cuSOLVER ``info`` with ``.item()`` (ATen's
#: ``_linalg_check_errors``), which the dispatch mode cannot see from Python. ``torch.linalg.eigh`` and
#: ``eigvalsh`` both reach ``_linalg_eigh``; ``inv_ex``, ``cholesky_ex`` and ``solve_ex`` do not check.
INTERNAL_HOST_READ_OPS = frozenset({"_linalg_eigh", "_linalg_svd", "linalg_eig", "_linalg_eigvals"})

#: Indexing operations that read back when an index is a boolean mask (``t[mask]``, ``t[mask] = v``).
_MASK_INDEXING = frozenset({"index", "index_put", "index_put_", "_index_put_impl_"})


def _has_mask_index(args: tuple) -> bool:
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)


_active_counters: list[HostReadCounter] = []


class HostReadCounter(TorchDispatchMode):
    """Counts ATen operations, host reads of tensor values and data-dependent-shape operations.

    Attributes:
        ops: ATen operations dispatched (on an accelerator: roughly the kernels launched).
        host_reads: transfers of values to the host: ``_local_scalar_dense``, each
            :func:`read_to_host` (which reads several values at once), and each operation of
            :data:`INTERNAL_HOST_READ_OPS` (which reads its status back on CUDA).
        linalg_reads: the part of ``host_reads`` due to :data:`INTERNAL_HOST_READ_OPS`.
        host_writes: tensors made from host data (``torch.tensor(x, device=...)``, ``lift_fresh``): on
            an accelerator each is a host-to-device copy from pageable memory. Python scalars passed to
            an operation (``torch.where(c, 1, 0)``, ``x * 0.5``) are not copies.
        data_dependent: operations whose output shape depends on the data.
        by_op: ``Counter`` of operation names.

    Example::

        with HostReadCounter() as count:
            optimizer.step(closure)
        count.host_reads
    """

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0
        self.host_reads = 0
        self.linalg_reads = 0
        self.host_writes = 0
        self.data_dependent = 0
        self.by_op: Counter[str] = Counter()

    def __enter__(self) -> HostReadCounter:
        _active_counters.append(self)
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        _active_counters.remove(self)
        super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        name = func.overloadpacket.__name__
        self.ops += 1
        self.by_op[name] += 1
        if name == "_local_scalar_dense":
            self.host_reads += 1
        elif name in INTERNAL_HOST_READ_OPS:
            self.host_reads += 1
            self.linalg_reads += 1
        elif name in ("lift_fresh", "lift_fresh_copy"):
            self.host_writes += 1
        elif name in DATA_DEPENDENT_SHAPE_OPS or (name in _MASK_INDEXING and _has_mask_index(args)):
            self.data_dependent += 1
        return func(*args, **(kwargs or {}))


__all__ = [
    "DATA_DEPENDENT_SHAPE_OPS",
    "INTERNAL_HOST_READ_OPS",
    "HostReadCounter",
    "read_to_host",
    "to_device",
    "to_host",
]
