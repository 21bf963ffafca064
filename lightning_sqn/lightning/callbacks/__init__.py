"""Lightning callbacks for the quasi-Newton optimizers: what each step did (:class:`TrustRegionMonitor`),
skipped curvature updates (:class:`SkippedUpdateCounter`) and a batch-size schedule
(:class:`BatchSizeScheduler`)."""

from lightning_sqn.lightning.callbacks.batch_size import BatchSizeScheduler
from lightning_sqn.lightning.callbacks.skipped_updates import SkippedUpdateCounter
from lightning_sqn.lightning.callbacks.trust_region_monitor import TrustRegionMonitor

__all__ = ["BatchSizeScheduler", "SkippedUpdateCounter", "TrustRegionMonitor"]
