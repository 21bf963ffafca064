"""Communication injected into the optimizers; the only package besides ``lightning/`` that imports
``torch.distributed``."""

from lightning_sqn.distributed.communicator import (
    Communicator,
    TorchDistributedCommunicator,
    check_communicator,
)

__all__ = ["Communicator", "TorchDistributedCommunicator", "check_communicator"]
