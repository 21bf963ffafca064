"""Where a decision is taken: on the host (reading a tensor) or on the device (a masked select).

Reading a tensor's value on the host (``bool(t)``, ``float(t)``, ``t.item()``) is free for a CPU tensor
but waits for every queued kernel on an accelerator. The hot paths therefore have two forms: on the
CPU they branch on the host (e.g. stop the secular Newton iteration once it has converged, write a
pair only if it is stored); on an accelerator they use fixed-shape device operations (``torch.where``,
masked writes, a fixed iteration count) that never read a value back. :func:`host_reads_are_free` is
the single place that picks the form.

Testing the accelerator form without an accelerator: inside :func:`accelerator_code_path` the device
form is taken on CPU tensors as well, and :class:`HostReadCounter` counts the values read back
(``aten._local_scalar_dense``, which ``item``, ``bool``, ``float`` and ``int`` of a tensor all reach;
:func:`read_to_host`; the linear-algebra kernels that read their status back on CUDA), the tensors made
from host data (host-to-device copies on an accelerator) and the operations whose output shape
depends on the data (``nonzero`` and friends, which read back too). Together they show on the CPU how
many synchronisations a step costs on a GPU; ``tests/gpu`` checks the count against CUDA's own.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_forced_device_path = False


def host_reads_are_free(device: torch.device | Any) -> bool:
    """Whether reading tensors on ``device`` costs no synchronisation (the CPU), so code may branch on
    the host. False inside :func:`accelerator_code_path`."""
    return device.type == "cpu" and not _forced_device_path


@contextlib.contextmanager
def accelerator_code_path() -> Iterator[None]:
    """Take the accelerator (no host reads) form of every hot path, also on CPU tensors (for tests and
    for counting what a step costs on an accelerator)."""
    global _forced_device_path
    before, _forced_device_path = _forced_device_path, True
    try:
        yield
    finally:
        _forced_device_path = before


def one_hot_mask(index: torch.Tensor, size: int) -> torch.Tensor:
    """(size,) bool, True at the 0-dim ``index`` only. Unlike ``torch.nn.functional.one_hot``, which
    reads ``index`` back to check its range, it never leaves the device."""
    return torch.arange(size, device=index.device) == index


def select_row(rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``rows[index]`` for a 0-dim integer tensor ``index`` without reading it back (plain indexing with
    a 0-dim tensor converts it to a Python int)."""
    return rows.index_select(0, index.reshape(1))[0]


def device_scalar(
    value: float | int | bool, *, dtype: torch.dtype, device: torch.device | str
) -> torch.Tensor:
    """A 0-dim tensor holding a Python value, made by a fill on ``device``: ``torch.tensor(value,
    device=...)`` would build it on the host and copy it over (on CUDA a copy from pageable memory,
    which PyTorch issues as a synchronous copy)."""
    return torch.full((), value, dtype=dtype, device=device)


def read_to_host(*values: torch.Tensor) -> list[float]:
    """Several 0-dim tensors as Python floats, with one device-to-host transfer for all of them (each
    ``float(t)`` would be a transfer and a synchronisation of its own). Counted by
    :class:`HostReadCounter` as one host read."""
    # float64 holds every value exactly (float16/32 numbers and small counts); MPS has no float64.
    dtype = torch.float32 if values[0].device.type == "mps" else torch.float64
    stacked = torch.stack([v.reshape(()).to(dtype) for v in values])
    for counter in _active_counters:
        counter.host_reads += 1
    return (stacked if stacked.device.type == "cpu" else stacked.cpu()).tolist()


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
            an accelerator each is a host-to-device copy from pageable memory (synchronous in
            PyTorch's copy path; ``tests/gpu`` checks the total against CUDA's count). Python scalars
            passed to an operation (``torch.where(c, 1, 0)``, ``x * 0.5``) are not copies.
        data_dependent: operations whose output shape depends on the data.
        by_op: ``Counter`` of operation names.

    Example::

        with accelerator_code_path(), HostReadCounter() as count:
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
    "accelerator_code_path",
    "device_scalar",
    "host_reads_are_free",
    "one_hot_mask",
    "read_to_host",
    "select_row",
]
