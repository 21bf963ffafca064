"""Lightning integration: the ``sqn`` and ``ddp_sqn`` strategies (registered on import) and the guards
that refuse Trainer settings under which the optimizers cannot evaluate their closure."""

from lightning_sqn.lightning.guards import GuardCallback, check_full_batch, check_trainer
from lightning_sqn.lightning.strategy import SQNDDPStrategy, SQNSingleDeviceStrategy

__all__ = ["GuardCallback", "SQNDDPStrategy", "SQNSingleDeviceStrategy", "check_full_batch", "check_trainer"]
