"""Globalization: trust-region radius policy, line searches and the Hessian-free damping rule."""

from lightning_sqn.globalization.damping import LevenbergMarquardt
from lightning_sqn.globalization.linesearch import (
    ArmijoBacktracking,
    LineSearch,
    LineSearchResult,
    StrongWolfe,
)
from lightning_sqn.globalization.trust_region import TrustRegionPolicy

__all__ = [
    "ArmijoBacktracking",
    "LevenbergMarquardt",
    "LineSearch",
    "LineSearchResult",
    "StrongWolfe",
    "TrustRegionPolicy",
]
