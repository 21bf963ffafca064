"""lightning_sqn: second-order and quasi-Newton optimizers for PyTorch and Lightning.

Optimizers (all closure-driven ``torch.optim.Optimizer`` subclasses over one flat parameter vector):

* :class:`LSR1`: limited-memory SR1 with a trust region (OBS subproblem) or a line search.
* :class:`LBFGS`: limited-memory BFGS (compact form) with a line search and optional forgetting.
* :class:`BFGS`, :class:`SR1`: dense variants for tiny models.
* :class:`SampledLSR1`, :class:`SampledLBFGS`: sampled quasi-Newton (Berahas, Jahani & Takáč).
* :class:`HessianFree`: Martens' Hessian-free optimization (damped GGN or Hessian products, CG).
* :class:`TrustRegionNewton`: trust-region Newton in an RMSProp / Adagrad ellipsoid (Kohler et al.).
"""

from lightning_sqn.callbacks import BatchSizeScheduler, SkippedUpdateCounter, TrustRegionMonitor
from lightning_sqn.globalization import ArmijoBacktracking, StrongWolfe, TrustRegionPolicy
from lightning_sqn.lightning import GuardCallback, SQNDDPStrategy, SQNSingleDeviceStrategy, check_trainer
from lightning_sqn.optim import (
    BFGS,
    LBFGS,
    LSR1,
    SR1,
    HessianFree,
    NoLearningRateError,
    NonFiniteLossError,
    SampledLBFGS,
    SampledLSR1,
    StepStats,
    TrustRegionNewton,
)

__version__ = "0.1.0"

__all__ = [
    "BFGS",
    "LBFGS",
    "LSR1",
    "SR1",
    "ArmijoBacktracking",
    "BatchSizeScheduler",
    "GuardCallback",
    "HessianFree",
    "NoLearningRateError",
    "NonFiniteLossError",
    "SQNDDPStrategy",
    "SQNSingleDeviceStrategy",
    "SampledLBFGS",
    "SampledLSR1",
    "SkippedUpdateCounter",
    "StepStats",
    "StrongWolfe",
    "TrustRegionMonitor",
    "TrustRegionNewton",
    "TrustRegionPolicy",
    "__version__",
    "check_trainer",
]
