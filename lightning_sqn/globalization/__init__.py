"""Globalization: trust-region radius policy and line searches."""

from lightning_sqn.globalization.linesearch import (
    ArmijoBacktracking,
    LineSearch,
    LineSearchResult,
    StrongWolfe,
)
from lightning_sqn.globalization.trust_region import TrustRegionPolicy

__all__ = ["ArmijoBacktracking", "LineSearch", "LineSearchResult", "StrongWolfe", "TrustRegionPolicy"]
