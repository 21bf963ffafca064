"""``torch.optim.Optimizer`` subclasses: composition of curvature model and globalization, and bookkeeping."""

from lightning_sqn.optim.base import NonFiniteLossError, QuasiNewtonOptimizer, StepStats
from lightning_sqn.optim.dense import BFGS, SR1
from lightning_sqn.optim.hessian_free import HessianFree, KrylovExit, LevenbergMarquardt
from lightning_sqn.optim.lbfgs import LBFGS
from lightning_sqn.optim.lsr1 import LSR1
from lightning_sqn.optim.sampled import SampledLBFGS, SampledLSR1
from lightning_sqn.optim.trust_region_newton import TrustRegionNewton

__all__ = [
    "BFGS",
    "LBFGS",
    "LSR1",
    "SR1",
    "HessianFree",
    "KrylovExit",
    "LevenbergMarquardt",
    "NonFiniteLossError",
    "QuasiNewtonOptimizer",
    "SampledLBFGS",
    "SampledLSR1",
    "StepStats",
    "TrustRegionNewton",
]
