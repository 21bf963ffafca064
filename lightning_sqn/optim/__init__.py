"""``torch.optim.Optimizer`` subclasses: composition of curvature model and globalization, and bookkeeping."""

from lightning_sqn.globalization.damping import LevenbergMarquardt
from lightning_sqn.optim.base import QuasiNewtonOptimizer
from lightning_sqn.optim.dense import BFGS, SR1
from lightning_sqn.optim.evaluation import NonFiniteLossError
from lightning_sqn.optim.groups import NoLearningRateError
from lightning_sqn.optim.hessian_free import HessianFree
from lightning_sqn.optim.lbfgs import LBFGS
from lightning_sqn.optim.lsr1 import LSR1
from lightning_sqn.optim.sampled import SampledLBFGS, SampledLSR1
from lightning_sqn.optim.stats import StepStats
from lightning_sqn.optim.trust_region_newton import TrustRegionNewton

__all__ = [
    "BFGS",
    "LBFGS",
    "LSR1",
    "SR1",
    "HessianFree",
    "LevenbergMarquardt",
    "NoLearningRateError",
    "NonFiniteLossError",
    "QuasiNewtonOptimizer",
    "SampledLBFGS",
    "SampledLSR1",
    "StepStats",
    "TrustRegionNewton",
]
