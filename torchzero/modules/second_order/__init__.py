"""Second-order methods: Newton's method with an exact Hessian, and Newton-CG with Hessian-vector products."""

from .newton import ExactNewton, NewtonCG

__all__ = ["ExactNewton", "NewtonCG"]
