"""Checks only a GPU can make; skipped without CUDA (CI has none). Run them with
``bash benchmarks/gpu_check.sh`` on a machine with a GPU.

The CPU suite counts every step's device operations and host transfers
(``tests/optim/test_host_reads.py``). Here the same code runs on CUDA tensors:

* float64 runs of every deterministic optimizer on CUDA equal the CPU runs;
* the sampled optimizers (their directions come from a CUDA generator, so they differ from the CPU's)
  run and decrease the loss;
* Hessian, GGN and gradient-graph products (batched on CUDA) equal the CPU products;
* the synchronisations PyTorch itself reports (``torch.cuda.set_sync_debug_mode``) are the host
  transfers the CPU counts (``HostReadCounter``: two reads and one coefficient copy per trust-region
  step).

``LIGHTNING_SQN_TEST_DEVICE=cpu`` runs the module against the CPU instead (a dry run of the test logic;
the synchronisation test needs CUDA and stays skipped).
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "optim"))  # the optimizer registry
from registry import OPTIMIZER_CASES, CountingClosure, full_loss, make_batches, make_mlp

import lightning_sqn
from lightning_sqn._device import HostReadCounter
from lightning_sqn.curvature import ggn_vp, hvp_from_graph, hvp_functional
from lightning_sqn.curvature.graph import GradientGraph

DEVICE = os.environ.get("LIGHTNING_SQN_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(
    DEVICE == "cuda" and not torch.cuda.is_available(),
    reason="needs CUDA: run `bash benchmarks/gpu_check.sh` on a GPU machine",
)

CASES = {c.name: c for c in OPTIMIZER_CASES}
DETERMINISTIC = [c.name for c in OPTIMIZER_CASES if not c.name.startswith("sampled_")]
SAMPLED = [c.name for c in OPTIMIZER_CASES if c.name.startswith("sampled_")]
STEPS = 6


def _run(name: str, device: str, steps: int) -> tuple[list[float], nn.Module]:
    model = make_mlp().to(device)
    opt = CASES[name].factory(model.parameters())
    batches = [(X.to(device), y.to(device)) for X, y in make_batches()]
    closure = CountingClosure(model, opt, batches)
    losses = [float(opt.step(closure.new_step(t))) for t in range(steps)]
    return losses, model


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_float64_runs_equal_the_cpu_runs(name: str) -> None:
    cpu_losses, cpu_model = _run(name, "cpu", STEPS)
    dev_losses, dev_model = _run(name, DEVICE, STEPS)
    assert dev_losses == pytest.approx(cpu_losses, rel=1e-7, abs=1e-12)
    for p, q in zip(cpu_model.parameters(), dev_model.parameters(), strict=True):
        torch.testing.assert_close(q.cpu(), p, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", SAMPLED)
def test_sampled_runs_decrease_the_loss(name: str) -> None:
    batches = [(X.to(DEVICE), y.to(DEVICE)) for X, y in make_batches()]
    before = full_loss(make_mlp().to(DEVICE), batches)
    losses, model = _run(name, DEVICE, 12)
    assert all(math.isfinite(v) for v in losses)
    assert full_loss(model, batches) < 0.8 * before
    assert all(p.device.type == torch.device(DEVICE).type for p in model.parameters())


def test_hessian_free_ggn_with_the_per_layer_preconditioner_equals_cpu() -> None:
    def run(device: str) -> list[float]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double().to(device)
        gen = torch.Generator().manual_seed(1)
        X = torch.randn(64, 6, generator=gen, dtype=torch.float64).to(device)
        y = torch.randint(0, 3, (64,), generator=gen).to(device)
        opt = lightning_sqn.HessianFree(model.parameters(), loss="cross_entropy", damping=1.0)
        opt.watch_module(model)

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(model(X), y)
            loss.backward()
            return loss

        return [float(opt.step(closure)) for _ in range(4)]

    assert run(DEVICE) == pytest.approx(run("cpu"), rel=1e-7)


def test_curvature_products_equal_the_cpu_products() -> None:
    def products(device: str) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).double().to(device)
        gen = torch.Generator().manual_seed(2)
        X = torch.randn(16, 6, generator=gen, dtype=torch.float64).to(device)
        y = torch.randint(0, 3, (16,), generator=gen).to(device)
        params = list(model.parameters())
        n = sum(p.numel() for p in params)
        V = torch.randn(n, 5, generator=gen, dtype=torch.float64).to(device)
        grads = torch.autograd.grad(F.cross_entropy(model(X), y), params, create_graph=True)
        graph = GradientGraph(grads, params)
        return {
            "graph": hvp_from_graph(grads, params, V),
            "graph_block_default": graph.hvp(V.T.contiguous()).T,  # batched on an accelerator
            "functional": hvp_functional(model, F.cross_entropy, X, y, V),
            "ggn": ggn_vp(model, "cross_entropy", X, y, V),
        }

    cpu, dev = products("cpu"), products(DEVICE)
    for key in cpu:
        torch.testing.assert_close(dev[key].cpu(), cpu[key], rtol=1e-10, atol=1e-12, msg=key)


@pytest.mark.skipif(DEVICE != "cuda", reason="torch.cuda.set_sync_debug_mode needs CUDA")
@pytest.mark.parametrize("name", ["lsr1_tr_scaled", "lsr1_tr_eigen", "lsr1_ls_scaled", "lbfgs"])
def test_cuda_synchronisations_are_the_counted_host_reads(name: str) -> None:
    """Every synchronisation CUDA reports in a step is one the CPU emulation counts, and vice versa."""
    model = make_mlp().to(DEVICE)
    opt = CASES[name].factory(model.parameters())
    batches = [(X.to(DEVICE), y.to(DEVICE)) for X, y in make_batches()]
    closure = CountingClosure(model, opt, batches)
    for t in range(3):
        opt.step(closure.new_step(t))
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught, HostReadCounter() as count:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            opt.step(closure.new_step(3))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    detail = "\n".join(f"{w.filename}:{w.lineno}: {str(w.message)[:80]}" for w in syncs)
    assert len(syncs) == count.host_reads + count.host_writes, detail
