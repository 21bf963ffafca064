"""Lightning callbacks for the quasi-Newton optimizers: what each step did (:class:`TrustRegionMonitor`),
skipped curvature updates (:class:`SkippedUpdateCounter`), a batch-size schedule
(:class:`BatchSizeScheduler`) and sampled curvature pairs at intervals (:class:`CurvaturePairSampler`)."""

from lightning_sqn.lightning.callbacks.batch_size import BatchSizeScheduler
from lightning_sqn.lightning.callbacks.curvature_sampler import CurvaturePairSampler
from lightning_sqn.lightning.callbacks.skipped_updates import SkippedUpdateCounter
from lightning_sqn.lightning.callbacks.trust_region_monitor import TrustRegionMonitor

__all__ = ["BatchSizeScheduler", "CurvaturePairSampler", "SkippedUpdateCounter", "TrustRegionMonitor"]
