"""Quasi-Newton matrices: limited-memory compact forms (L-SR1, L-BFGS) and dense forms (SR1, BFGS).

Each offers ``mv`` (B v), ``inv_mv`` (H v), ``update(s, y)`` and ``to_dense()``; none sees a closure.
"""

from lightning_sqn.qn.dense import MAX_DENSE_DIM, DenseBFGS, DenseQuasiNewton, DenseSR1
from lightning_sqn.qn.lbfgs import LBFGSMatrix
from lightning_sqn.qn.lsr1 import CompactFactors, LSR1Matrix
from lightning_sqn.qn.memory import PairMemory

__all__ = [
    "MAX_DENSE_DIM",
    "CompactFactors",
    "DenseBFGS",
    "DenseQuasiNewton",
    "DenseSR1",
    "LBFGSMatrix",
    "LSR1Matrix",
    "PairMemory",
]
