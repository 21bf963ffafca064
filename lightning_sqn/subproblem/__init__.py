"""Trust-region subproblem solvers; the exact ones return a :class:`~.result.TrustRegionResult`.

* :func:`solve_obs`: exact L-SR1 solver in m x m algebra (Brust, Erway & Marcia).
* :func:`solve_exact`: dense Moré-Sorensen via eigh (oracle and tiny problems); :func:`cauchy_point`.
* :func:`solve_steihaug`: Steihaug-Toint truncated CG in a diagonal ``A``-norm from products ``B v``
  (Kohler, Adolphs & Lucchi); returns its own :class:`~.steihaug.SteihaugResult`.
"""

from lightning_sqn.subproblem.exact import cauchy_point, solve_exact
from lightning_sqn.subproblem.obs import HostOBSSolution, solve_obs, solve_obs_host
from lightning_sqn.subproblem.result import SolverStatus, TrustRegionResult
from lightning_sqn.subproblem.steihaug import SteihaugResult, solve_steihaug

__all__ = [
    "HostOBSSolution",
    "SolverStatus",
    "SteihaugResult",
    "TrustRegionResult",
    "cauchy_point",
    "solve_exact",
    "solve_obs",
    "solve_obs_host",
    "solve_steihaug",
]
