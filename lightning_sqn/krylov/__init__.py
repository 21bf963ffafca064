"""Krylov solvers on flat tensors given only matrix-vector products.

* :func:`solve_cg`: (preconditioned) linear CG on ``q(x) = 1/2 x^T A x - b^T x`` with Martens'
  Hessian-free extras: relative-progress stopping (:class:`ProgressWindow`), warm start, diagonal
  preconditioner, iterates stored for :func:`cg_backtrack`.

The trust-region variant (Steihaug-Toint truncated CG) lives in :mod:`lightning_sqn.subproblem.steihaug`.
"""

from lightning_sqn.krylov.cg import CGResult, ProgressWindow, cg_backtrack, solve_cg

__all__ = ["CGResult", "ProgressWindow", "cg_backtrack", "solve_cg"]
