"""``strategy="ddp_sqn"`` on 2 CPU processes (gloo) equals one process on the concatenated batch.

The worker (``ddp_worker.py``) is started as two real processes with the torch.distributed environment
variables, so Lightning treats them as externally launched ranks (as under torchrun). One spawn runs all
cases to pay the start-up cost once (about 15 s on 2 cores).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_worker import OPTIMIZER_CASES

WORKER = Path(__file__).with_name("ddp_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(out: Path, world: int) -> list[dict]:
    port = _free_port()
    procs = []
    for rank in range(world):
        env = dict(os.environ)
        if world > 1:
            env.update(
                MASTER_ADDR="127.0.0.1",
                MASTER_PORT=str(port),
                WORLD_SIZE=str(world),
                RANK=str(rank),
                LOCAL_RANK=str(rank),
                NODE_RANK="0",
            )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), str(out)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
    logs = [p.communicate(timeout=240)[0].decode(errors="replace") for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    return [torch.load(f"{out}.rank{r}", weights_only=False) for r in range(world)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[dict, list[dict]]:
    tmp = tmp_path_factory.mktemp("ddp")
    (single,) = _run(tmp / "single", 1)
    ranks = _run(tmp / "ddp", 2)
    return single, ranks


@pytest.mark.parametrize("case", OPTIMIZER_CASES)
def test_two_ranks_equal_one_process_with_the_double_batch(runs, case) -> None:
    single, ranks = runs
    ref = single[case]
    assert ref["steps"] == 20
    for rank in ranks:
        got = rank[case]
        assert got["steps"] == ref["steps"]
        # Identical decisions and closure counts at every step ...
        assert [r["accepted"] for r in got["rows"]] == [r["accepted"] for r in ref["rows"]]
        assert [r["closure_evals"] for r in got["rows"]] == [r["closure_evals"] for r in ref["rows"]]
        assert [r["training_steps"] for r in got["rows"]] == [r["closure_evals"] for r in got["rows"]]
        # ... the global loss, and the parameters after 20 steps within 1e-6 relative.
        torch.testing.assert_close(
            torch.tensor([r["loss"] for r in got["rows"]]),
            torch.tensor([r["loss"] for r in ref["rows"]]),
            rtol=1e-9,
            atol=0,
        )
        rel = (got["params"] - ref["params"]).norm() / ref["params"].norm()
        assert rel <= 1e-6, float(rel)
    assert any(not r["accepted"] for r in ref["rows"]) or case != "lsr1_tr"  # the run exercises rejections


@pytest.mark.parametrize("case", ["sampler_hessian", "sampler_gradient"])
def test_curvature_pair_sampler_under_ddp_sqn_equals_one_process(runs, case) -> None:
    single, ranks = runs
    ref = single[case]
    assert ref["steps"] == 20 and ref["refreshes"] == 5
    for rank in ranks:
        got = rank[case]
        assert got["refreshes"] == 5
        assert [r["accepted"] for r in got["rows"]] == [r["accepted"] for r in ref["rows"]]
        rel = (got["params"] - ref["params"]).norm() / ref["params"].norm()
        assert rel <= 1e-6, float(rel)


def test_hessian_products_of_two_shards_equal_the_single_process_product(runs) -> None:
    """Products on each rank's shard (the local graph), averaged once per block over the two ranks,
    equal the product with the Hessian of the loss on the concatenated batch (skewed shards)."""
    single, ranks = runs
    ref = single["products"]["HV"]
    assert ref.shape == (3, 129) and ref.abs().amax() > 0
    for rank in ranks:
        torch.testing.assert_close(rank["products"]["HV"], ref, rtol=1e-12, atol=1e-12)


def test_ranks_with_very_different_losses_decide_identically(runs) -> None:
    """Rank 1's shard has targets shifted by 10: its own loss is ~100x rank 0's. The decisions (and the
    closure counts, so no rank waits in a collective the other never enters) are still identical."""
    single, (r0, r1) = runs
    a, b = r0["lsr1_tr_skewed"]["rows"], r1["lsr1_tr_skewed"]["rows"]
    assert len(a) == len(b) == 20
    assert a == b
    assert [r["accepted"] for r in a] == [r["accepted"] for r in single["lsr1_tr_skewed"]["rows"]]
    assert 0 < sum(r["accepted"] for r in a) < 20  # accepts and rejects both occur
    torch.testing.assert_close(r0["lsr1_tr_skewed"]["params"], r1["lsr1_tr_skewed"]["params"], rtol=0, atol=0)


def test_plain_ddp_refuses_our_optimizers(runs) -> None:
    _, ranks = runs
    for rank in ranks:
        name, message = rank["plain_ddp_error"]
        assert name == "MisconfigurationException"
        assert "ddp_sqn" in message and "diverge" in message


def test_callbacks_under_ddp_sqn_split_the_global_batch(runs) -> None:
    """TrustRegionMonitor, SkippedUpdateCounter and BatchSizeScheduler (global sizes 16, 32, 80) under
    ddp_sqn: each rank's loader yields global // 2 per batch, and the run equals the single process."""
    single, ranks = runs
    ref = single["callbacks"]
    n_per_rank = 80  # N // world
    # every batch appears twice: two training_step calls (closure evaluations) per trust-region step
    expected_rank = (
        [8] * (2 * n_per_rank // 8) + [16] * (2 * n_per_rank // 16) + [40] * (2 * n_per_rank // 40)
    )
    for rank in ranks:
        got = rank["callbacks"]
        assert got["batch_sizes"] == expected_rank
        assert [r["accepted"] for r in got["rows"]] == [r["accepted"] for r in ref["rows"]]
        rel = (got["params"] - ref["params"]).norm() / ref["params"].norm()
        assert rel <= 1e-6, float(rel)
    assert ref["batch_sizes"] == [2 * b for b in expected_rank]


def test_hessian_free_curvature_mini_batch_changes_the_run(runs) -> None:
    """The ``_half`` case (curvature products on half of each batch) is a different run from the full-batch
    one, so its rank-vs-single-process equality above tests the curvature mini-batch, not a no-op."""
    single, _ = runs
    full, half = single["hessian_free_ggn"]["params"], single["hessian_free_ggn_half"]["params"]
    assert (full - half).norm() > 1e-6 * full.norm()
