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


@pytest.fixture(autouse=True, scope="session")
def _extraction_cache(tmp_path_factory):
    """Gzipped MNIST files are extracted into ``$LIGHTNING_SQN_CACHE`` (default ``~/.cache/lightning_sqn``):
    a folder of this session's, also for the processes the tests start (DDP ranks inherit it)."""
    import os

    before = os.environ.get("LIGHTNING_SQN_CACHE")
    os.environ["LIGHTNING_SQN_CACHE"] = str(tmp_path_factory.mktemp("extracted"))
    yield
    if before is None:
        os.environ.pop("LIGHTNING_SQN_CACHE", None)
    else:
        os.environ["LIGHTNING_SQN_CACHE"] = before
