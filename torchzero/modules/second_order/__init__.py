"""Second-order methods: Newton's method with an exact Hessian, and Newton-CG with Hessian-vector products, Sophia."""

from .newton import ExactNewton, NewtonCG
from .sophia import Sophia

__all__ = ["ExactNewton", "NewtonCG", "Sophia"]
