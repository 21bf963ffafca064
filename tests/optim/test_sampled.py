"""Sampled L-SR1 / L-BFGS: sampled pairs against the exact Hessian, options I vs II, the toy study."""

from __future__ import annotations

import pytest
import torch
from registry import backward
from torch import nn
from torch.func import hessian

import lightning_sqn
from lightning_sqn.curvature.sampling import DirectionSampler, check_sampling
from lightning_sqn.problems.toy import TOY_WIDTHS, toy_sigmoid_network, toy_xor_data


def _quadratic(n: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    Q = torch.randn(n, n, generator=g, dtype=torch.float64)
    A = Q @ Q.T / n + 0.1 * torch.eye(n, dtype=torch.float64)
    A[0, 1] = A[1, 0] = -2.0  # indefinite
    b = torch.randn(n, generator=g, dtype=torch.float64)
    x = nn.Parameter(torch.randn(n, generator=g, dtype=torch.float64))
    return A, b, x


def _closure(opt, loss_fn):
    def closure():
        opt.zero_grad()
        loss = loss_fn()
        backward(loss, opt)
        return loss

    return closure


@pytest.mark.parametrize("sampling", ["hessian", "gradient"])
@pytest.mark.parametrize("cls", [lightning_sqn.SampledLSR1, lightning_sqn.SampledLBFGS])
def test_pairs_on_a_quadratic_satisfy_y_equals_a_s(cls, sampling: str) -> None:
    A, b, x = _quadratic()
    opt = cls([x], memory=4, sample_radius=0.3, sampling=sampling, seed=3)
    closure = _closure(opt, lambda: 0.5 * x @ A @ x - b @ x)
    x0 = x.detach().clone()
    S, Y = opt.sample_pairs(closure)
    assert S.shape == Y.shape == (4, 12)
    torch.testing.assert_close(torch.linalg.vector_norm(S, dim=1), torch.full((4,), 0.3, dtype=torch.float64))
    torch.testing.assert_close(Y, S @ A, rtol=0, atol=1e-13)
    assert torch.equal(x.detach(), x0)  # the parameters are back at x


def test_option_one_approaches_option_two_as_the_radius_shrinks() -> None:
    X, y = toy_xor_data(10)
    model = toy_sigmoid_network("medium")
    errors = []
    for r in (1e-1, 1e-2, 1e-3):
        pairs = {}
        for sampling in ("hessian", "gradient"):
            opt = lightning_sqn.SampledLSR1(
                model.parameters(), memory=3, sample_radius=r, sampling=sampling, seed=7
            )
            closure = _closure(opt, lambda: nn.functional.cross_entropy(model(X), y))
            pairs[sampling] = opt.sample_pairs(closure)
        (S2, Y2), (S1, Y1) = pairs["hessian"], pairs["gradient"]
        torch.testing.assert_close(S1, S2, rtol=0, atol=0)  # same seed: same directions
        errors.append(float(torch.linalg.matrix_norm(Y1 - Y2) / torch.linalg.matrix_norm(Y2)))
    # y_i - H s_i = O(r^2) while H s_i = O(r): the relative error falls about 10x per 10x in r.
    assert errors[0] > 5 * errors[1] > 25 * errors[2]
    assert errors[2] < 1e-2


def test_hessian_pairs_match_the_dense_hessian_of_a_network() -> None:
    X, y = toy_xor_data(10)
    model = toy_sigmoid_network("small")
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    x0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(flat):
        chunks = flat.split([s.numel() for s in shapes])
        params = {n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        return nn.functional.cross_entropy(torch.func.functional_call(model, params, (X,)), y)

    H = hessian(f)(x0)
    opt = lightning_sqn.SampledLSR1(model.parameters(), memory=5, sample_radius=0.5, seed=0)
    S, Y = opt.sample_pairs(_closure(opt, lambda: nn.functional.cross_entropy(model(X), y)))
    torch.testing.assert_close(Y, S @ H, rtol=1e-10, atol=1e-12)


def test_directions_are_reproducible_and_restricted_to_parameters_with_gradients() -> None:
    mask = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    a = DirectionSampler(3, 2.0, torch.device("cpu"), seed=5)
    b = DirectionSampler(3, 2.0, torch.device("cpu"), seed=5)
    Sa, Sb = (
        a.sample(5, torch.float64, torch.device("cpu"), mask=mask),
        b.sample(5, torch.float64, torch.device("cpu"), mask=mask),
    )
    assert torch.equal(Sa, Sb)
    assert torch.all(Sa[:, mask == 0] == 0)
    torch.testing.assert_close(
        torch.linalg.vector_norm(Sa, dim=1), torch.full((3,), 2.0, dtype=torch.float64)
    )
    assert not torch.equal(a.sample(5, torch.float64, torch.device("cpu")), Sa)  # the generator advances
    state = a.state_dict()
    nxt = a.sample(5, torch.float64, torch.device("cpu"))
    a.load_state_dict(state)
    assert torch.equal(a.sample(5, torch.float64, torch.device("cpu")), nxt)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(memory=0), "integer >= 1"),
        (dict(memory=2.5), "integer >= 1"),
        (dict(sample_radius=0.0), "sample_radius"),
        (dict(sample_radius=float("inf")), "sample_radius"),
        (dict(sampling="fisher"), "option II"),
    ],
)
def test_bad_options_raise(kwargs, match) -> None:
    args = dict(memory=3, sample_radius=1.0, sampling="hessian") | kwargs
    with pytest.raises(ValueError, match=match):
        check_sampling(args["memory"], args["sample_radius"], args["sampling"])
    with pytest.raises(ValueError, match=match):
        lightning_sqn.SampledLSR1([nn.Parameter(torch.zeros(3, dtype=torch.float64))], **args)


def test_missing_graph_in_plain_pytorch_raises_the_convention() -> None:
    A, b, x = _quadratic()
    opt = lightning_sqn.SampledLSR1([x], memory=3)
    x0 = x.detach().clone()

    def closure():
        opt.zero_grad()
        loss = 0.5 * x @ A @ x - b @ x
        loss.backward()  # no create_graph
        return loss

    with pytest.raises(RuntimeError, match=r"loss.backward\(create_graph=True\)") as info:
        opt.step(closure)
    assert "strategy='sqn'" in str(info.value)
    assert torch.equal(x.detach(), x0) and opt.counters.steps == 0


def test_option_one_needs_no_graph_and_skips_non_finite_samples() -> None:
    A, b, x = _quadratic()
    opt = lightning_sqn.SampledLSR1([x], memory=4, sample_radius=0.1, sampling="gradient", seed=0)
    calls = {"n": 0}

    def closure():
        calls["n"] += 1
        opt.zero_grad()
        loss = 0.5 * x @ A @ x - b @ x
        if calls["n"] == 3:  # the second sampled point
            loss = loss * float("nan")
        loss.backward()
        return loss

    opt.step(closure)
    record = opt.last_step.as_dict()
    assert record["closure_evals"] == 6 and record["hessian_products"] == 0
    assert record["pairs_sampled"] == 4 and record["pairs_kept"] <= 3
    assert opt.counters.as_dict()["skipped_pairs"] == 4 - record["pairs_kept"]


def test_first_step_is_already_quasi_newton_and_solves_a_quadratic_with_full_memory() -> None:
    # m = n sampled Hessian pairs give B = A exactly, so the first trust-region step with a large
    # radius is the Newton step (an SPD quadratic) and lands on the minimiser.
    g = torch.Generator().manual_seed(1)
    Q = torch.randn(6, 6, generator=g, dtype=torch.float64)
    A = Q @ Q.T + torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    x = nn.Parameter(torch.zeros(6, dtype=torch.float64))
    opt = lightning_sqn.SampledLSR1([x], memory=6, sample_radius=1.0, initial_radius=1e3, seed=0)
    opt.step(_closure(opt, lambda: 0.5 * x @ A @ x - b @ x))
    torch.testing.assert_close(x.detach(), torch.linalg.solve(A, b), rtol=1e-9, atol=1e-10)
    assert opt.last_step.as_dict()["pairs_kept"] == 6


@pytest.mark.parametrize("size", list(TOY_WIDTHS))
def test_toy_networks_reach_full_training_accuracy(size: str) -> None:
    X, y = toy_xor_data()
    model = toy_sigmoid_network(size)
    d = sum(p.numel() for p in model.parameters())
    assert d == {"small": 36, "medium": 176, "large": 908}[size]
    opt = lightning_sqn.SampledLSR1(model.parameters(), memory=10, sampling="hessian", seed=0)
    closure = _closure(opt, lambda: nn.functional.cross_entropy(model(X), y))
    for _ in range(300):
        opt.step(closure)
        with torch.no_grad():
            if bool((model(X).argmax(1) == y).all()):
                break
    with torch.no_grad():
        assert bool((model(X).argmax(1) == y).all())
    assert opt.counters.closure_evals == 2 * opt.counters.steps


def test_steihaug_subproblem_matches_obs_in_the_interior_and_respects_the_radius() -> None:
    # SPD quadratic, m = n Hessian pairs: B = A. With a large radius both solvers give the Newton step;
    # with a small one Steihaug stays within the radius and decreases the model.
    g = torch.Generator().manual_seed(4)
    Q = torch.randn(6, 6, generator=g, dtype=torch.float64)
    A = Q @ Q.T + torch.eye(6, dtype=torch.float64)
    b = torch.randn(6, generator=g, dtype=torch.float64)
    for radius in (1e3, 0.05):
        steps = {}
        for subproblem in ("obs", "steihaug"):
            x = nn.Parameter(torch.zeros(6, dtype=torch.float64))
            opt = lightning_sqn.SampledLSR1(
                [x], memory=6, initial_radius=radius, subproblem=subproblem, seed=0
            )
            opt.step(_closure(opt, lambda x=x: 0.5 * x @ A @ x - b @ x))
            record = opt.last_step.as_dict()
            assert record["step_norm"] <= radius * (1 + 1e-12)
            assert record["predicted_reduction"] > 0
            steps[subproblem] = (x.detach().clone(), record)
        if radius > 1:
            torch.testing.assert_close(steps["obs"][0], torch.linalg.solve(A, b), rtol=1e-9, atol=1e-10)
            # truncated CG stops inside once ||A s - b|| <= ||b|| min(0.1, ||b||^0.5) (Krylov rule)
            residual = torch.linalg.vector_norm(A @ steps["steihaug"][0] - b)
            assert residual <= torch.linalg.vector_norm(b) * min(0.1, float(b.norm()) ** 0.5)
            assert steps["steihaug"][1]["subproblem_status"] == 0  # interior
        else:
            assert steps["steihaug"][1]["subproblem_status"] == 1  # boundary
            # the exact solution decreases the model at least as much as truncated CG
            assert (
                steps["obs"][1]["predicted_reduction"] >= steps["steihaug"][1]["predicted_reduction"] - 1e-12
            )
        assert "eig_min" not in steps["steihaug"][1]
