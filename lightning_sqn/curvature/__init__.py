"""Products with true curvature: Hessian-vector products and generalized Gauss-Newton products.

All functions act on the flat parameter vector in the order of ``list(module.parameters())``; vectors
are ``(n,)`` or blocks ``(n, k)`` with the vectors as columns.
"""

from lightning_sqn.curvature.ggn import LOSSES, ggn_vp, output_hessian_vp
from lightning_sqn.curvature.hvp import hvp_from_graph, hvp_functional

__all__ = ["LOSSES", "ggn_vp", "hvp_from_graph", "hvp_functional", "output_hessian_vp"]
