"""Curvature pairs sampled around the iterate (Berahas, Jahani & Takáč, "Sampled quasi-Newton methods").

Instead of pairs (s_k, y_k) collected along the iterates, each refresh forgets the memory and builds m
new pairs at the current point w (their Alg. 1):

* directions: S = [sigma_1, ..., sigma_m], random, of length r (the sampling radius);
* option I (``sampling="gradient"``): y_i = grad F(w + sigma_i) - grad F(w), m gradient evaluations;
  sensitive to r (the pairs see the curvature of a neighbourhood of radius r);
* option II (``sampling="hessian"``): Y = grad^2 F(w) S, one batched block of Hessian-vector products;
  independent of r (Y scales with S).

The pairs that pass the method's test (SR1 skip rule or BFGS curvature condition) form the memory.
Directions: sigma_i = r z_i / ||z_i|| with z_i ~ N(0, I): the sampled points lie on the sphere of
radius r around w (the poster does not state the distribution; with this choice r is the distance of
the sampled points from w, the quantity option I is sensitive to).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_sqn import _checks as checks
from lightning_sqn._flat import FlatParams
from lightning_sqn._state import check_tensor, require_keys
from lightning_sqn.distributed.communicator import Communicator

Sampling = Literal["hessian", "gradient"]
SAMPLINGS: tuple[str, ...] = ("hessian", "gradient")


def check_sampling(num_pairs: Any, sample_radius: Any, sampling: Any) -> None:
    """ValueError for a bad number of pairs, radius or sampling option."""
    checks.integer("memory", num_pairs, 1, allowed="an integer >= 1 (the number of sampled pairs)")
    checks.positive("sample_radius", sample_radius)
    if not isinstance(sampling, str) or sampling not in SAMPLINGS:
        checks.fail(
            "sampling",
            "'hessian' (option II: Y = grad^2 F(w) S, batched Hessian-vector products) or 'gradient' "
            "(option I: y_i = grad F(w + sigma_i) - grad F(w))",
            sampling,
        )


class DirectionSampler:
    """Random directions S (m, n), each of length r, identical on all ranks.

    The generator lives on the parameters' device. Its seed is ``seed`` or, when ``None``, drawn from
    the global CPU generator on first use (so ``seed_everything`` controls it); under several ranks the
    seed is averaged once over the ranks, so every rank draws the same directions.

    Args:
        num_pairs: m.
        radius: r.
        device: the parameters' device.
        seed: the generator's seed (``None``: from the global generator).
    """

    def __init__(self, num_pairs: int, radius: float, device: torch.device, seed: int | None = None) -> None:
        self.num_pairs = num_pairs
        self.radius = float(radius)
        self.seed = seed
        self.generator = torch.Generator(device=device)
        self._seeded = False

    def _seed(self, communicator: Communicator | None) -> None:
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
        if communicator is not None:  # the mean of integers < 2^31 over ranks is exact in float64
            seed = int(communicator.all_reduce_mean(torch.tensor(float(seed), dtype=torch.float64)).item())
        self.generator.manual_seed(seed)
        self._seeded = True

    def sample(
        self,
        n: int,
        dtype: torch.dtype,
        device: torch.device,
        communicator: Communicator | None = None,
        mask: Tensor | None = None,
    ) -> Tensor:
        """S: ``num_pairs`` rows sigma_i = r z_i / ||z_i||, z_i ~ N(0, I_n).

        ``mask`` (0/1 of length n): sample only on these coordinates (z_i = mask * N(0, I_n)).
        """
        if not self._seeded:
            self._seed(communicator)
        Z = torch.randn(self.num_pairs, n, generator=self.generator, dtype=dtype, device=device)
        if mask is not None:
            Z.mul_(mask)
        return Z.mul_(self.radius / torch.linalg.vector_norm(Z, dim=1, keepdim=True))

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "seeded": self._seeded}

    def check_state(self, state: Any) -> None:
        require_keys("direction-sampler", state, ("generator", "seeded"))
        check_tensor("the sampler's 'generator' state", state["generator"], self.generator.get_state())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state(state)
        self.generator.set_state(state["generator"])
        self._seeded = bool(state["seeded"])

    # transactions (see lightning_sqn._state): the generator's state is a few kB on the host
    def begin(self) -> dict[str, Any]:
        return self.state_dict()

    def commit(self) -> None:
        pass

    def rollback(self, token: dict[str, Any]) -> None:
        self.load_state_dict(token)


def sampled_differences(
    S: Tensor,
    sampling: Sampling,
    *,
    hvp: Callable[[Tensor], Tensor] | None = None,
    gradient_at: Callable[[Tensor], Tensor] | None = None,
    g: Tensor | None = None,
) -> Tensor:
    """Y for the directions S (rows): option II ``hvp(S)`` or option I ``gradient_at(sigma_i) - g``.

    Args:
        S: (m, n) directions.
        sampling: ``"hessian"`` (option II) or ``"gradient"`` (option I).
        hvp: block product V -> V H (rows), for option II.
        gradient_at: sigma -> grad F(w + sigma) (leaves the parameters at w afterwards), for option I.
        g: grad F(w), for option I.
    """
    if sampling == "hessian":
        if hvp is None:
            raise ValueError("option II (sampling='hessian') needs hvp")
        return hvp(S)
    if gradient_at is None or g is None:
        raise ValueError("option I (sampling='gradient') needs gradient_at and g")
    Y = torch.empty_like(S)
    for i in range(S.shape[0]):  # m gradient evaluations at w + sigma_i
        torch.sub(gradient_at(S[i]), g, out=Y[i])
    return Y


def sample_pairs(
    sampler: DirectionSampler,
    flat: FlatParams,
    sampling: Sampling,
    x: Tensor,
    *,
    communicator: Communicator | None,
    mask: Tensor | None,
    hvp: Callable[[Tensor], Tensor] | None = None,
    gradient_at: Callable[[Tensor], Tensor] | None = None,
    g: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Berahas et al.'s Alg. 1: directions S around x (on the coordinates of ``mask``) and Y from
    :func:`sampled_differences`; the parameters hold x again afterwards. The one sampling routine of
    :class:`~lightning_sqn.optim.sampled.SampledPairs` and the ``CurvaturePairSampler`` callback."""
    S = sampler.sample(flat.numel, flat.dtype, flat.device, communicator, mask)
    try:
        Y = sampled_differences(S, sampling, hvp=hvp, gradient_at=gradient_at, g=g)
    finally:
        if sampling == "gradient":
            flat.set_params(x)
    return S, Y


__all__ = [
    "SAMPLINGS",
    "DirectionSampler",
    "Sampling",
    "check_sampling",
    "sample_pairs",
    "sampled_differences",
]
