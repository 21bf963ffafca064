"""``torch.optim.Optimizer`` subclasses: composition of curvature model and globalization, and bookkeeping."""

from lightning_sqn.optim.base import NonFiniteLossError, QuasiNewtonOptimizer, StepStats
from lightning_sqn.optim.dense import BFGS, SR1
from lightning_sqn.optim.lbfgs import LBFGS
from lightning_sqn.optim.lsr1 import LSR1
from lightning_sqn.optim.sampled import SampledLBFGS, SampledLSR1

__all__ = [
    "BFGS",
    "LBFGS",
    "LSR1",
    "SR1",
    "NonFiniteLossError",
    "QuasiNewtonOptimizer",
    "SampledLBFGS",
    "SampledLSR1",
    "StepStats",
]
