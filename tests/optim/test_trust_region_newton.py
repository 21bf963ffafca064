"""TrustRegionNewton (Kohler, Adolphs & Lucchi) against independent references, in float64.

The step, radius, acceptance and the RMSProp / Adagrad accumulator are recomputed step by step from
the stated rules; the subproblem is checked on quadratics (interior Newton step, boundary and negative
curvature exits on ||s||_A = radius); Rosenbrock to ||g|| <= 1e-6; warm-up steps; a non-finite trial
point; and a Lightning fit with the monitoring callbacks.
"""

from __future__ import annotations

import math

import pytest
import torch
from registry import CountingClosure, backward, make_batches, make_mlp, minimize_rosenbrock
from test_hessian_free import fit_recording_grad_modes, lightning_fit
from torch import Tensor, nn

import lightning_sqn
from lightning_sqn.subproblem.result import SolverStatus

F = nn.functional


def _flat(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _grad(model: nn.Module, X: Tensor, y: Tensor) -> Tensor:
    g = torch.autograd.grad(F.mse_loss(model(X), y), list(model.parameters()))
    return torch.cat([t.reshape(-1) for t in g])


def _quadratic_closure(opt, x: Tensor, Q: Tensor, b: Tensor):
    def closure() -> Tensor:
        opt.zero_grad()
        f = 0.5 * x @ Q @ x - b @ x
        backward(f, opt)
        return f

    return closure


# ----------------------------------------------------------------------------------------- the rules
@pytest.mark.parametrize("norm", ["uniform", "adagrad", "rmsprop"])
def test_rosenbrock_reaches_gradient_tolerance(norm: str) -> None:
    minimize_rosenbrock(lambda p: lightning_sqn.TrustRegionNewton(p, norm=norm), 4, max_steps=300)


def test_non_finite_trial_point_is_rejected_and_the_accumulator_waits() -> None:
    model, batches = make_mlp(), make_batches()
    opt = lightning_sqn.TrustRegionNewton(model.parameters(), norm="rmsprop", initial_radius=1.0)
    for t in range(2):
        opt.step(CountingClosure(model, opt, batches).new_step(t))
    before, v_before = _flat(model), opt.v.clone()
    closure = CountingClosure(model, opt, batches, corrupt=lambda call: call == 2)
    opt.step(closure.new_step(2))
    r = opt.last_step.as_dict()
    assert closure.calls == 2 and math.isnan(r["trial_loss"]) and r["rho"] == -math.inf
    assert r["accepted"] is False and r["next_radius"] == pytest.approx(r["radius"] / 1.1)
    assert torch.equal(_flat(model), before)
    opt.step(CountingClosure(model, opt, batches).new_step(0))  # after a rejection v stays
    assert torch.equal(opt.v, v_before) and opt.last_step.as_dict()["radius"] == r["next_radius"]


def test_warmup_steps_are_first_order_rmsprop_steps() -> None:
    model, batches = make_mlp(), make_batches()
    opt = lightning_sqn.TrustRegionNewton(model.parameters(), norm="rmsprop", warmup_steps=2, lr=0.05)
    v = None
    for t in range(3):
        X, y = batches[t]
        x0, g = _flat(model), _grad(model, X, y)
        closure = CountingClosure(model, opt, batches).new_step(t)
        opt.step(closure)
        r = opt.last_step.as_dict()
        if t < 2:
            v = g * g if v is None else 0.8 * v + 0.2 * g * g
            a = v.sqrt() + 1e-8
            torch.testing.assert_close(_flat(model), x0 - 0.05 * g / a, rtol=1e-12, atol=1e-14)
            assert r["warmup"] is True and closure.calls == 1 and "radius" not in r
        else:  # the first trust-region step updates v (the warm-up steps all moved)
            torch.testing.assert_close(opt.v, 0.8 * v + 0.2 * g * g, rtol=1e-12, atol=0)
            assert r["warmup"] is False and closure.calls == 2 and r["radius"] == 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(norm="adam"), "norm"),
        (dict(initial_radius=0.0), "initial_radius"),
        (dict(max_radius=0.5), "max_radius"),
        (dict(eta1=0.0), "eta1"),
        (dict(eta2=1e-5), "eta2"),
        (dict(gamma1=1.0), "gamma1"),
        (dict(gamma2=0.5), "gamma2"),
        (dict(krylov_tol=0.0), "krylov_tol"),
        (dict(max_cg_iters=0), "max_cg_iters"),
        (dict(beta=1.0), "beta"),
        (dict(eps=0.0), "eps"),
        (dict(warmup_steps=-1), "warmup_steps"),
        (dict(warmup_steps=3), "lr"),
    ],
)
def test_bad_options_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        lightning_sqn.TrustRegionNewton(make_mlp().parameters(), **kwargs)


def test_closure_without_graph_raises_the_convention() -> None:
    model, (X, y) = make_mlp(), make_batches(1)[0]
    opt = lightning_sqn.TrustRegionNewton(model.parameters())

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.mse_loss(model(X), y)
        loss.backward()
        return loss

    with pytest.raises(RuntimeError, match="create_graph=True"):
        opt.step(closure)


def test_lightning_fit_with_monitoring_callbacks(tmp_path) -> None:
    rows, before, after = lightning_fit(
        tmp_path, lambda p: lightning_sqn.TrustRegionNewton(p, norm="rmsprop", initial_radius=1.0)
    )
    assert after < 0.8 * before
    step_rows = [r for r in rows if r.get("sqn/radius")]
    assert len(step_rows) == 8
    names = ("radius", "next_radius", "rho", "accepted", "step_norm", "predicted_reduction")
    for name in (*names, "cg_iterations", "subproblem_status", "curvature_products"):
        assert all(r[f"sqn/{name}"] != "" for r in step_rows), name
    assert all(float(r["sqn/subproblem_status"]) in {int(k) for k in SolverStatus} for r in step_rows)
    assert all(float(r["sqn/closure_evals"]) == 2 for r in step_rows)
    assert [r for r in rows if r.get("sqn/skipped_updates")]


def test_lightning_trial_point_is_a_forward_pass_with_the_plain_step_s_result() -> None:
    """Under ``strategy="sqn"`` the trial point's evaluation computes only the loss (no backward pass;
    the method uses no gradient there): the same parameters and decisions as plain PyTorch, whose
    closure computes that gradient anyway, and one backpropagation less per step in the counters."""
    from torch.utils.data import DataLoader, TensorDataset

    make = lambda p: lightning_sqn.TrustRegionNewton(p, norm="rmsprop", initial_radius=1.0)  # noqa: E731
    model, trainer, grad_modes, (X, y) = fit_recording_grad_modes(make)
    counters = trainer.optimizers[0].counters
    # x_k with autograd (its graph feeds the Hessian-vector products), the trial point without
    assert grad_modes == [True, False] * 4
    assert counters.loss_only_evals == 4 and counters.closure_evals == 8
    assert counters.backprops == 4 + counters.curvature_products
    assert counters.accepted_steps >= 1

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = make(net.parameters())
    for xb, yb in DataLoader(TensorDataset(X, y), batch_size=16):

        def closure(xb=xb, yb=yb) -> Tensor:
            opt.zero_grad()
            loss = F.cross_entropy(net(xb), yb)
            loss.backward(create_graph=opt.graph_requested)
            return loss

        opt.step(closure)
    plain = opt.counters
    assert plain.loss_only_evals == 0 and plain.backprops == 8 + plain.curvature_products
    assert (plain.accepted_steps, plain.curvature_products) == (
        counters.accepted_steps,
        counters.curvature_products,
    )
    torch.testing.assert_close(_flat(net), _flat(model.net), rtol=0, atol=0)
