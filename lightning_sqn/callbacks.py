"""``lightning_sqn.callbacks``: the Lightning callbacks (defined in ``lightning_sqn.lightning.callbacks``)."""

from lightning_sqn.lightning.callbacks import (
    BatchSizeScheduler,
    CurvaturePairSampler,
    SkippedUpdateCounter,
    TrustRegionMonitor,
)
from lightning_sqn.lightning.guards import GuardCallback

__all__ = [
    "BatchSizeScheduler",
    "CurvaturePairSampler",
    "GuardCallback",
    "SkippedUpdateCounter",
    "TrustRegionMonitor",
]
