r"""Autoencoders: reconstruct the input through a bottleneck (Hinton & Salakhutdinov 2006; the deep
autoencoder benchmarks of Martens 2010 and Kohler, Adolphs & Lucchi, Section 5).

The network maps an image batch to *logits* of the same number of pixels; the reconstruction is their
sigmoid, and the loss is the pixelwise binary cross entropy against the input's pixels in [0, 1]
("sigmoid activations ... the reconstructed images are fed pixelwise into a binary cross entropy loss"),
computed from the logits (``binary_cross_entropy_with_logits``, numerically stable, and the form whose
Gauss-Newton matrix ``HessianFree(loss="bce_with_logits")`` uses):

.. math::

    f(w) = \frac{1}{b}\sum_{i=1}^{b} \frac{1}{P}\sum_{p=1}^{P}
           \operatorname{BCE}\bigl(\sigma(h_w(x_i))_p,\ x_{ip}\bigr) + \frac{\lambda}{2}\|w\|_2^2 ,

the mean over the batch's images and pixels (``reduction="mean"``, PyTorch's default; Martens sums over
pixels, which scales f by P and changes nothing else but the size of the numbers).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torchmetrics import MeanMetric

from lightning_sqn.problems.task import OptimizerFactory, TrainingTask


class ReconstructionTask(TrainingTask):
    r"""Train an autoencoder with any optimizer; the targets are the inputs themselves.

    Expects batches ``(x, y)`` (the labels are ignored) with pixels in [0, 1], so the DataModule must not
    normalize (``normalize=False``). Logged, besides :class:`~lightning_sqn.problems.task.TrainingTask`'s
    ``train/loss`` (the BCE above), ``train/backprops`` and the wall times:

    * ``train/squared_error`` per step: :math:`\frac{1}{b}\sum_i \|\sigma(h_w(x_i)) - x_i\|^2` on the
      step's batch at :math:`x_k` (the squared reconstruction error, summed over pixels and averaged over
      images, the measure of Martens' results table), and its epoch mean;
    * ``test/loss`` and ``test/squared_error`` per epoch on the evaluation set, and ``train_set/loss``,
      ``train_set/squared_error`` on the whole training set at the epoch's end when the DataModule has
      ``eval_train=True`` (the training-set column of Martens' table).

    Args:
        model: maps ``(N, ...)`` images to ``N`` logit vectors with as many entries as an image has pixels
            (e.g. :func:`~lightning_sqn.problems.models.autoencoder`).
        optimizer, optimizer_options, weight_decay, lr_milestones, lr_gamma: see
            :class:`~lightning_sqn.problems.task.TrainingTask`.

    Raises:
        ValueError: see :class:`~lightning_sqn.problems.task.TrainingTask`; at a step, a network whose
            output does not have one logit per pixel.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerFactory | str = "lsr1",
        optimizer_options: dict[str, Any] | None = None,
        weight_decay: float = 0.0,
        lr_milestones: Sequence[int] | None = None,
        lr_gamma: float = 0.1,
    ) -> None:
        super().__init__(model, optimizer, optimizer_options, weight_decay, lr_milestones, lr_gamma)

    def _logits_and_target(self, x: Tensor) -> tuple[Tensor, Tensor]:
        target = x.flatten(1)
        logits = self(x).flatten(1)
        if logits.shape != target.shape:
            raise ValueError(
                f"an autoencoder must output one logit per input pixel: got {tuple(logits.shape)} for inputs "
                f"of {target.shape[1]} pixels"
            )
        return logits, target

    @staticmethod
    def squared_error(logits: Tensor, target: Tensor) -> Tensor:
        """Per image: the squared error of the reconstruction ``sigmoid(logits)``, summed over pixels."""
        return (logits.sigmoid() - target).pow(2).sum(dim=1)

    def batch_loss(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        logits, target = self._logits_and_target(batch[0])
        loss = nn.functional.binary_cross_entropy_with_logits(logits, target)
        return loss, {"squared_error": self.squared_error(logits.detach(), target).mean()}

    def reconstruct(self, x: Tensor) -> Tensor:
        """The reconstructed images (pixels in [0, 1], the shape of ``x``)."""
        return self(x).reshape(x.shape).sigmoid()

    # ------------------------------------------------------------------ evaluation
    def new_eval_metrics(self) -> nn.ModuleDict:
        return nn.ModuleDict({"loss": MeanMetric(), "squared_error": MeanMetric()})

    def eval_step(self, batch: tuple[Tensor, Tensor], metrics: nn.ModuleDict) -> None:
        logits, target = self._logits_and_target(batch[0])
        n = target.shape[0]
        metrics["loss"].update(nn.functional.binary_cross_entropy_with_logits(logits, target), weight=n)
        metrics["squared_error"].update(self.squared_error(logits, target).mean(), weight=n)

    def eval_values(self, metrics: nn.ModuleDict) -> dict[str, Tensor]:
        return {name: metric.compute() for name, metric in metrics.items()}


__all__ = ["ReconstructionTask"]
