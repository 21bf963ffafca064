"""Lightning integration: the ``ddp_sqn`` strategy (registered on import)."""

from lightning_sqn.lightning.strategy import SQNDDPStrategy

__all__ = ["SQNDDPStrategy"]
