"""Trust-region subproblem solvers, each returning a :class:`~.result.TrustRegionResult`.

* :func:`solve_obs`: exact L-SR1 solver in m x m algebra (Brust, Erway & Marcia).
* :func:`solve_exact`: dense Moré-Sorensen via eigh (oracle and tiny problems); :func:`cauchy_point`.
"""

from lightning_sqn.subproblem.exact import cauchy_point, solve_exact
from lightning_sqn.subproblem.obs import OBSSolution, solve_obs, solve_obs_small
from lightning_sqn.subproblem.result import SubproblemStatus, TrustRegionResult

__all__ = [
    "OBSSolution",
    "SubproblemStatus",
    "TrustRegionResult",
    "cauchy_point",
    "solve_exact",
    "solve_obs",
    "solve_obs_small",
]
