"""Suite-wide settings."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """The test problems are small: intra-op threads only add overhead (milliseconds per tiny matmul on
    a busy 2-core machine), so the whole suite runs single-threaded."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=["host", "device"])
def code_path(request):
    """Run a test through both forms of the hot paths (see ``lightning_sqn._device``): ``"host"``
    branches on CPU values as the CPU does; ``"device"`` takes the accelerator form (fixed-shape masked
    operations, no host reads) on the same CPU tensors."""
    from lightning_sqn._device import accelerator_code_path

    if request.param == "host":
        yield request.param
    else:
        with accelerator_code_path():
            yield request.param
