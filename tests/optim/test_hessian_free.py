"""HessianFree (Martens 2010) against dense references, in float64.

GGN products through the forward capture against a dense ``J^T H_l J`` built with ``torch.func``
(including the curvature mini-batch), the preconditioner against a Python loop over per-example
gradients, one exact outer step on linear least squares, Rosenbrock to ||g|| <= 1e-6, the
Levenberg-Marquardt rule, the warm start, errors, and a Lightning fit with the monitoring callbacks.
"""

from __future__ import annotations

import csv
import io
import math

import lightning
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from registry import backward, minimize_rosenbrock
from torch import Tensor, nn
from torch.func import functional_call, hessian, jacrev
from torch.utils.data import DataLoader, TensorDataset

import lightning_sqn
from lightning_sqn._flat import FunctionalModule
from lightning_sqn.curvature.capture import CaptureError, ForwardCapture
from lightning_sqn.curvature.ggn import ggn_matvec
from lightning_sqn.globalization.damping import LevenbergMarquardt
from lightning_sqn.optim import hessian_free_model
from lightning_sqn.subproblem.result import SolverStatus

F = nn.functional


def _mlp(seed: int = 0, out: int = 3) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, out)).double()


def _data(n: int = 12, seed: int = 1) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return X, torch.randint(0, 3, (n,), generator=g)


def _closure(opt: torch.optim.Optimizer, model: nn.Module, X: Tensor, y: Tensor, loss_fn=F.cross_entropy):
    def closure() -> Tensor:
        opt.zero_grad()
        loss = loss_fn(model(X), y)
        backward(loss, opt)
        return loss

    return closure


def _flat_fn(model: nn.Module):
    """``theta -> model`` as a function of the flat parameter vector, and theta."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def call(flat: Tensor, X: Tensor) -> Tensor:
        chunks = flat.split([s.numel() for s in shapes])
        return functional_call(model, dict(zip(names, [c.view(s) for c, s in zip(chunks, shapes)])), (X,))

    return call, theta


def _dense_ggn(model: nn.Module, X: Tensor, y: Tensor, loss_fn) -> Tensor:
    """J^T (d^2 l / dz^2) J of the mean loss over (X, y), all dense (torch.func)."""
    call, theta = _flat_fn(model)
    z = call(theta, X)
    J = jacrev(lambda t: call(t, X))(theta).reshape(z.numel(), -1)
    H = hessian(lambda out: loss_fn(out.reshape(z.shape), y))(z.reshape(-1))
    return J.T @ H @ J


def _spy_cg(monkeypatch) -> list[dict]:
    """Record the arguments and results of every solve_cg call of HessianFree, and the dense matrix of
    its operator (formed before CG runs, while the parameters are at x_k)."""
    calls: list[dict] = []
    real = hessian_free_model.solve_cg

    def spy(matvec, b, **kwargs):
        E = torch.eye(b.numel(), dtype=b.dtype)
        A = torch.stack([matvec(e) for e in E], dim=1)
        res = real(matvec, b, **kwargs)
        calls.append({"A": A, "b": b, "res": res, **kwargs})
        return res

    monkeypatch.setattr(hessian_free_model, "solve_cg", spy)
    return calls


# ------------------------------------------------------------------------------------- GGN products
@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "bce_with_logits"])
def test_captured_ggn_products_match_the_dense_ggn(loss: str) -> None:
    model, (X, y) = _mlp(), _data()
    loss_fn = {
        "cross_entropy": lambda z, t: F.cross_entropy(z, t),
        "mse": lambda z, t: F.mse_loss(z, F.one_hot(t, 3).double()),
        "bce_with_logits": lambda z, t: F.binary_cross_entropy_with_logits(z, F.one_hot(t, 3).double()),
    }[loss]
    capture = ForwardCapture(model)
    capture.arm()
    loss_fn(model(X), y).backward()
    capture.disarm()
    batch = capture.batch("test")
    opt = lightning_sqn.HessianFree(model.parameters(), loss=loss)
    matvec = ggn_matvec(FunctionalModule(model, opt._flat), loss, batch.inputs)
    G = _dense_ggn(model, X, y, loss_fn)
    V = torch.randn(G.shape[0], 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    got = torch.stack([matvec(v) for v in V.T], dim=1)
    torch.testing.assert_close(got, G @ V, rtol=1e-10, atol=1e-12)
    capture.remove()


@pytest.mark.parametrize("fraction", [1.0, 0.5, 0.3])
def test_first_cg_solve_uses_the_damped_ggn_of_the_curvature_batch(monkeypatch, fraction: float) -> None:
    """Through the whole capture route: the products CG sees are (G_K + lambda I) v with G_K the GGN of
    the mean loss over the first K = ceil(f B) examples; CG then solves that system (dense solve)."""
    calls = _spy_cg(monkeypatch)
    model, (X, y) = _mlp(), _data(12)
    opt = lightning_sqn.HessianFree(
        model.parameters(),
        loss="cross_entropy",
        damping=0.3,
        curvature_batch_fraction=fraction,
        preconditioner=False,
        cg_tol=1e-13,
        cg_eps=1e-15,  # let the residual test end CG
        max_cg_iters=500,
    )
    opt.watch_module(model)
    K = math.ceil(fraction * 12)
    G0 = _dense_ggn(model, X[:K], y[:K], F.cross_entropy) + 0.3 * torch.eye(51, dtype=torch.float64)
    x0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    g0 = torch.autograd.grad(F.cross_entropy(model(X), y), list(model.parameters()))
    g0 = torch.cat([t.reshape(-1) for t in g0])
    opt.step(_closure(opt, model, X, y))
    (call,) = calls
    torch.testing.assert_close(call["A"], G0, rtol=1e-10, atol=1e-12)
    res = call["res"]
    assert res.reason == "converged"
    torch.testing.assert_close(res.x, torch.linalg.solve(G0, -g0), rtol=1e-8, atol=1e-10)
    assert opt.last_step.curvature_products == res.matvecs and opt.last_step.hessian_products is None
    assert opt.last_step.cg_reason == SolverStatus.CONVERGED
    moved = torch.cat([p.detach().reshape(-1) for p in model.parameters()]) - x0
    assert opt.last_step.accepted
    i = opt.last_step.backtrack_index
    p = dict(res.iterates)[i]
    torch.testing.assert_close(moved, opt.last_step.step_length * p, rtol=1e-12, atol=1e-14)


def test_preconditioner_is_the_per_example_squared_gradient_sum(monkeypatch) -> None:
    """M = [D + lambda]^0.75 with D = (1/K) sum_{i<K} grad l_i^2 = B^2/K sum_i grad f_i^2 (f_i = l_i / B),
    per-example gradients by a Python loop; the curvature batch K = ceil(0.5 * 10) = 5."""
    calls = _spy_cg(monkeypatch)
    model, (X, y) = _mlp(), _data(10)
    opt = lightning_sqn.HessianFree(
        model.parameters(), loss="cross_entropy", damping=0.2, curvature_batch_fraction=0.5
    )
    opt.watch_module(model)
    D = torch.zeros(51, dtype=torch.float64)
    for i in range(5):
        gi = torch.autograd.grad(F.cross_entropy(model(X[i : i + 1]), y[i : i + 1]), list(model.parameters()))
        D += torch.cat([t.reshape(-1) for t in gi]) ** 2
    D /= 5
    opt.step(_closure(opt, model, X, y))
    torch.testing.assert_close(calls[0]["precond"], (D + 0.2) ** 0.75, rtol=1e-12, atol=1e-14)


def test_products_need_only_the_optimized_parameters_of_the_module(monkeypatch) -> None:
    """Optimizing the last layer only: the products are the principal block of the full GGN."""
    calls = _spy_cg(monkeypatch)
    model, (X, y) = _mlp(), _data()
    opt = lightning_sqn.HessianFree(model[2].parameters(), loss="cross_entropy", preconditioner=False)
    opt.watch_module(model)
    G = _dense_ggn(model, X, y, F.cross_entropy)[-21:, -21:] + torch.eye(21, dtype=torch.float64)
    opt.step(_closure(opt, model, X, y))
    torch.testing.assert_close(calls[0]["A"], G, rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------------- outer iteration
@pytest.mark.parametrize(
    "options",
    [
        dict(curvature="ggn", loss="mse", preconditioner=True),
        dict(curvature="ggn", loss="mse", preconditioner=False),
        dict(curvature="hessian", preconditioner=False),
    ],
    ids=["ggn-precond", "ggn", "hessian"],
)
def test_linear_least_squares_converges_in_one_outer_step(options: dict) -> None:
    g = torch.Generator().manual_seed(3)
    X = torch.randn(40, 7, generator=g, dtype=torch.float64)
    Y = torch.randn(40, 2, generator=g, dtype=torch.float64)
    model = nn.Linear(7, 2).double()
    opt = lightning_sqn.HessianFree(
        model.parameters(), damping=1e-12, cg_tol=1e-14, cg_eps=1e-15, max_cg_iters=1000, **options
    )  # exact CG: the residual test ends it, not the progress rule or the cap
    opt.watch_module(model)
    opt.step(_closure(opt, model, X, Y, F.mse_loss))
    # the least-squares solution with an intercept
    Xb = torch.cat([X, torch.ones(40, 1, dtype=torch.float64)], dim=1)
    W = torch.linalg.lstsq(Xb, Y).solution
    torch.testing.assert_close(model.weight.detach(), W[:7].T, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(model.bias.detach(), W[7], rtol=1e-9, atol=1e-10)
    record = opt.last_step.as_dict()
    assert record["accepted"] and record["step_length"] == 1.0
    assert record["rho"] == pytest.approx(1.0, abs=1e-6)  # the model is exact
    assert float(opt.damping) == pytest.approx(1e-12 * 2 / 3)  # rho > 3/4: lambda x 2/3


def _rosenbrock(x: Tensor) -> Tensor:
    """Extended Rosenbrock (MGH 21): uncoupled 2-D Rosenbrock functions, the minimiser (1, ..., 1)."""
    a, b = x[0::2], x[1::2]
    return (100.0 * (b - a**2) ** 2 + (1.0 - a) ** 2).sum()


@pytest.mark.parametrize("n", [2, 6])
def test_rosenbrock_reaches_gradient_tolerance(n: int) -> None:
    minimize_rosenbrock(
        lambda p: lightning_sqn.HessianFree(p, curvature="hessian", preconditioner=False), n, max_steps=200
    )


@pytest.mark.parametrize(
    ("rho", "factor"),
    [(-math.inf, 1.5), (math.nan, 1.5), (0.1, 1.5), (0.25, 1.0), (0.5, 1.0), (0.75, 1.0), (0.9, 2 / 3)],
)
def test_levenberg_marquardt_rule(rho: float, factor: float) -> None:
    assert LevenbergMarquardt().update(2.0, rho) == pytest.approx(2.0 * factor, rel=1e-15)


def test_damping_follows_the_rule_on_the_published_rho_and_warm_start_decays(monkeypatch) -> None:
    calls = _spy_cg(monkeypatch)
    model = _mlp()
    batches = [_data(12, seed) for seed in range(4)]
    opt = lightning_sqn.HessianFree(model.parameters(), loss="cross_entropy", damping=5.0)
    opt.watch_module(model)
    rule = LevenbergMarquardt()
    rhos = []
    for k, (X, y) in enumerate(batches):
        opt.step(_closure(opt, model, X, y))
        record = opt.last_step.as_dict()
        rhos.append(record["rho"])
        assert float(opt.damping) == pytest.approx(rule.update(record["damping"], record["rho"]), rel=1e-12)
        # rho = (f(x + p) - f(x)) / q(p), q the damped model value of the backtracked iterate
        assert record["rho"] == pytest.approx(-record["actual_reduction"] / -record["predicted_reduction"])
        res = calls[k]["res"]
        assert record["predicted_reduction"] == -float(res.q_values[record["backtrack_index"]])
        if k == 0:
            assert calls[0]["x0"] is None
        else:  # CG starts from 0.95 x the previous run's last iterate
            torch.testing.assert_close(calls[k]["x0"], 0.95 * calls[k - 1]["res"].x, rtol=0, atol=0)
    assert any(r > 0.75 for r in rhos)  # lambda moved


def test_backtracking_and_line_search_evaluations_are_counted() -> None:
    model, (X, y) = _mlp(), _data()
    opt = lightning_sqn.HessianFree(model.parameters(), loss="cross_entropy", damping=1e-3)
    opt.watch_module(model)
    calls = []
    inner = _closure(opt, model, X, y)

    def closure() -> Tensor:
        calls.append(1)
        return inner()

    for _ in range(3):
        calls.clear()
        opt.step(closure)
        assert opt.last_step.closure_evals == len(calls) >= 2  # x_k and at least one stored iterate


def test_ggn_route_state_round_trips_bitwise() -> None:
    """The contract tests run the graph route; the GGN route with the preconditioner resumes bitwise too
    (damping, warm start) from a torch.save / torch.load(weights_only=True) checkpoint."""
    batches = [_data(12, seed) for seed in range(3)]

    def run(model, opt, steps):
        out = []
        for X, y in steps:
            opt.step(_closure(opt, model, X, y))
            out.append(opt.last_step.as_dict())
        return out

    def make(seed):
        model = _mlp(seed)
        opt = lightning_sqn.HessianFree(
            model.parameters(), loss="cross_entropy", curvature_batch_fraction=0.5
        )
        opt.watch_module(model)
        return model, opt

    ref_model, ref_opt = make(0)
    ref = run(ref_model, ref_opt, batches + batches)
    model, opt = make(0)
    run(model, opt, batches)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    model, opt = make(1)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    assert run(model, opt, batches) == ref[3:]
    for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
        assert torch.equal(p, q)


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(), "loss="),
        (dict(loss="nll"), "loss="),
        (dict(loss="mse", curvature="newton"), "curvature"),
        (dict(loss="mse", damping=0.0), "damping"),
        (dict(loss="mse", max_cg_iters=0), "max_cg_iters"),
        (dict(loss="mse", cg_eps=0.0), "cg_eps"),
        (dict(loss="mse", cg_tol=-1.0), "cg_tol"),
        (dict(loss="mse", warm_start_decay=1.5), "warm_start_decay"),
        (dict(loss="mse", preconditioner_exponent=2.0), "preconditioner_exponent"),
        (dict(loss="mse", curvature_batch_fraction=0.0), "curvature_batch_fraction"),
        (dict(curvature="hessian", curvature_batch_fraction=0.5), "graph of the closure"),
    ],
)
def test_bad_options_raise(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        lightning_sqn.HessianFree(_mlp().parameters(), **kwargs)


def test_capture_problems_raise_and_say_what_to_do() -> None:
    model, (X, y) = _mlp(), _data()
    opt = lightning_sqn.HessianFree(model.parameters(), loss="cross_entropy")
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(CaptureError, match="watch_module"):  # nothing watched
        opt.step(_closure(opt, model, X, y))
    opt.watch_module(model)

    def twice() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(X), y) + F.cross_entropy(model(X[:3]), y[:3])
        loss.backward()
        return loss

    with pytest.raises(CaptureError, match="2 times"):
        opt.step(twice)
    other = _mlp(seed=5)
    opt.watch_module(other)  # a module that never runs in the closure
    with pytest.raises(CaptureError, match="never called"):
        opt.step(_closure(opt, model, X, y))
    for p, q in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, q)
    with pytest.raises(RuntimeError, match="no parameter has a gradient"):
        opt.step(_closure(opt, other, X, y))  # other's output, but the optimizer owns model's parameters
    # the hessian route without a watched module needs preconditioner=False
    hess = lightning_sqn.HessianFree(model.parameters(), curvature="hessian")
    with pytest.raises(CaptureError, match="preconditioner=False"):
        hess.step(_closure(hess, model, X, y))


# ---------------------------------------------------------------------------------------- Lightning
class _Classifier(lightning.LightningModule):
    """training_step calls ``self(x)``: the strategy's capture of the LightningModule sees the network."""

    def __init__(self, make_optimizer) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
        self.make_optimizer = make_optimizer

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self):
        return self.make_optimizer(self.parameters())


def lightning_fit(tmp_path, make_optimizer, steps: int = 8) -> tuple[list[dict], float, float]:
    """Fit with TrustRegionMonitor + SkippedUpdateCounter under strategy="sqn"; returns the CSV rows
    of the callbacks, and the full loss before and after."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 4, generator=g)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()
    model = _Classifier(make_optimizer)
    with torch.no_grad():
        before = float(F.cross_entropy(model(X), y))
    logger = CSVLogger(tmp_path, name="csv", version=0)
    trainer = lightning.Trainer(
        accelerator="cpu",
        devices=1,
        strategy="sqn",
        max_steps=steps,
        logger=logger,
        log_every_n_steps=1,
        callbacks=[lightning_sqn.TrustRegionMonitor(), lightning_sqn.SkippedUpdateCounter()],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(TensorDataset(X, y), batch_size=16))
    with torch.no_grad():
        after = float(F.cross_entropy(model(X), y))
    with open(logger.log_dir + "/metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    return rows, before, after


@pytest.mark.parametrize("curvature", ["ggn", "hessian"])
def test_lightning_fit_with_monitoring_callbacks(tmp_path, curvature: str) -> None:
    fraction = 0.5 if curvature == "ggn" else 1.0
    rows, before, after = lightning_fit(
        tmp_path,
        lambda p: lightning_sqn.HessianFree(
            p, curvature=curvature, loss="cross_entropy", curvature_batch_fraction=fraction
        ),
    )
    assert after < 0.8 * before
    step_rows = [r for r in rows if r.get("sqn/rho")]
    assert len(step_rows) == 8
    names = ("rho", "accepted", "step_norm", "predicted_reduction", "actual_reduction", "step_length")
    names += ("damping", "cg_iterations", "cg_reason", "backtrack_index", "curvature_products")
    for name in names:
        assert all(r[f"sqn/{name}"] != "" for r in step_rows), name
    assert all(r["sqn/closure_evals"] and float(r["sqn/closure_evals"]) >= 2 for r in step_rows)
    # the logged numbers are the optimizer's: lambda > 0, products = CG iterations, +1 for a warm start's
    # initial residual, +1 for a product that found negative curvature (Hessian) and ended CG
    for r in step_rows:
        assert float(r["sqn/damping"]) > 0
        iters, products = float(r["sqn/cg_iterations"]), float(r["sqn/curvature_products"])
        assert iters <= products <= iters + 2
        assert float(r["sqn/cg_reason"]) in {int(k) for k in SolverStatus}
    epoch_rows = [r for r in rows if r.get("sqn/skipped_updates")]
    assert epoch_rows and all(float(r["sqn/skipped_updates"]) == 0.0 for r in epoch_rows)


def fit_recording_grad_modes(make_optimizer, steps: int = 4):
    """Fit :class:`_Classifier` under ``strategy="sqn"`` for ``steps`` steps (batches of 16 of 64 points),
    recording ``torch.is_grad_enabled()`` at every forward of the network; returns the module, the
    Trainer, the recorded modes and the data ``(X, y)``."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 4, generator=g)
    y = (X[:, 0] > 0).long() + (X[:, 1] > 0.5).long()
    model = _Classifier(make_optimizer)
    grad_modes: list[bool] = []
    model.net.register_forward_hook(lambda *_: grad_modes.append(torch.is_grad_enabled()))
    trainer = lightning.Trainer(
        accelerator="cpu",
        strategy="sqn",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(TensorDataset(X, y), batch_size=16))
    return model, trainer, grad_modes, (X, y)


@pytest.mark.parametrize("line_search", ["default", "strong_wolfe"])
def test_lightning_backtracking_and_armijo_trials_are_forward_passes(line_search: str) -> None:
    """Under ``strategy="sqn"`` the evaluations after the gradient's (CG backtracking, Armijo trials) need
    only f: they run without autograd and without a backward pass, and the run takes exactly the plain
    PyTorch run's parameters and decisions (whose closure computes those gradients anyway). A line
    search that reads slopes (strong Wolfe) keeps full evaluations."""
    search = lightning_sqn.StrongWolfe() if line_search == "strong_wolfe" else "default"

    def make(p):
        return lightning_sqn.HessianFree(p, loss="cross_entropy", damping=0.1, line_search=search)

    model, trainer, grad_modes, (X, y) = fit_recording_grad_modes(make)
    counters = trainer.optimizers[0].counters
    if line_search == "default":
        assert counters.loss_only_evals == counters.closure_evals - counters.steps > 0
        assert grad_modes.count(False) == counters.loss_only_evals
    else:
        assert counters.loss_only_evals == 0 and False not in grad_modes
    assert (
        counters.backprops == counters.closure_evals - counters.loss_only_evals + counters.curvature_products
    )

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = make(net.parameters())
    opt.watch_module(net)
    for xb, yb in DataLoader(TensorDataset(X, y), batch_size=16):
        opt.step(_closure(opt, net, xb, yb))
    plain = opt.counters
    assert plain.loss_only_evals == 0
    fields = ("steps", "closure_evals", "accepted_steps", "curvature_products")
    assert [getattr(plain, f) for f in fields] == [getattr(counters, f) for f in fields]
    torch.testing.assert_close(
        torch.cat([p.flatten() for p in net.parameters()]),
        torch.cat([p.flatten() for p in model.net.parameters()]),
        rtol=0,
        atol=0,
    )
