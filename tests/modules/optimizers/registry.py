"""The optimizer registry: every update rule of ``tz.m`` with its reference.

Each :class:`~tests.parity.Case` pairs a torchzero chain with a torch.optim optimizer (or, for rules
torch does not have, a written-out per-tensor formula run by ``ReferenceOptimizer``), two param
groups with different settings, and the dtypes to run.  ``test_registry.py`` runs the matrix.

Naming: torch's ``weight_decay`` is ``tz.m.WeightDecay`` placed before the rule (coupled, L2) or
between the rule and ``LR`` (decoupled, scaled by the learning rate as in AdamW).  torch's ``lr`` is
``tz.m.LR``; rules call their own step size ``alpha``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

import torchzero as tz
from tests.parity import Case, ReferenceOptimizer

O = torch.optim  # noqa: E741
M2D = (((4, 3), (3, 5)), ((6, 2), (2, 2)))
"""matrix shapes only (torch.optim.Muon rejects anything else)"""


def _ref(rule: Any, **defaults: Any) -> Any:
    return lambda groups: ReferenceOptimizer(groups, rule, **defaults)


# ---------------------------------------------------------------- written-out formulas
def heavy_ball_rule(p: Tensor, g: Tensor, st: dict, group: dict, _orig: Tensor) -> None:
    b = st.get("b", torch.zeros_like(p))
    st["b"] = group["momentum"] * b + (1 - group["dampening"]) * g
    p.sub_(group["lr"] * st["b"])


def nesterov_rule(p: Tensor, g: Tensor, st: dict, group: dict, _orig: Tensor) -> None:
    b = st.get("b", torch.zeros_like(p))
    st["b"] = group["momentum"] * b + (1 - group["dampening"]) * g
    p.sub_(group["lr"] * (g + group["momentum"] * st["b"]))


def lion_rule(p: Tensor, g: Tensor, st: dict, group: dict, _orig: Tensor) -> None:
    beta1, beta2 = group["betas"]
    m = st.get("m", torch.zeros_like(p))
    p.sub_(group["lr"] * torch.sign(beta1 * m + (1 - beta1) * g))
    st["m"] = beta2 * m + (1 - beta2) * g


def orthogonal_factor(g: Tensor, steps: int, coefficients: tuple[float, float, float], eps: float) -> Tensor:
    """Newton-Schulz written out in float64: X <- a X + b (X X^T) X + c (X X^T)^2 X on the wide side."""
    a, b, c = coefficients
    x = g.reshape(g.shape[0], -1).double()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / max(float(torch.linalg.matrix_norm(x)), eps)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + b * (gram @ x) + c * (gram @ gram @ x)
    if tall:
        x = x.T
    return x.reshape(g.shape).to(g.dtype)


def shape_ratio(rule: str | None, rows: int, cols: int) -> float:
    if rule in (None, "original"):
        return math.sqrt(max(1.0, rows / cols))
    if rule == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return 1.0


def orthogonalize_rule(p: Tensor, g: Tensor, st: dict, group: dict, orig: Tensor) -> None:
    if orig.ndim < 2:
        p.sub_(group["lr"] * g)
        return
    o = orthogonal_factor(g, group["ns_steps"], group["ns_coefficients"], group["eps"])
    rows, cols = g.shape[0], g.numel() // g.shape[0]
    p.sub_(group["lr"] * shape_ratio(group["adjust_lr_fn"], rows, cols) * o)


def muon_rule(p: Tensor, g: Tensor, st: dict, group: dict, orig: Tensor) -> None:
    mu = group["momentum"]
    b = st.get("b", torch.zeros_like(p))
    st["b"] = mu * b + (1 - mu) * g
    direction = (1 - mu) * g + mu * st["b"] if group["nesterov"] else st["b"]
    orthogonalize_rule(p, direction, st, group, orig)


NS = {"ns_steps": 5, "ns_coefficients": (3.4445, -4.7750, 2.0315), "eps": 1e-7, "adjust_lr_fn": None}

# ---------------------------------------------------------------- the registry
WD0, WD1 = {"weight_decay": 0.1}, {"weight_decay": 0.03}


CASES: list[Case] = [
    # SGD family
    Case("sgd_momentum_dampening", lambda: [tz.m.SGD(), tz.m.LR(0.1)], lambda g: O.SGD(g, lr=0.1),
         groups=({"lr": 0.1, "momentum": 0.9, "dampening": 0.1}, {"lr": 0.05, "momentum": 0.5})),
    Case("sgd_nesterov", lambda: [tz.m.SGD(momentum=0.9, nesterov=True), tz.m.LR(0.1)],
         lambda g: O.SGD(g, lr=0.1, momentum=0.9, nesterov=True),
         groups=({"lr": 0.1}, {"lr": 0.02, "momentum": 0.8})),
    Case("sgd_weight_decay", lambda: [tz.m.WeightDecay(0.0), tz.m.SGD(momentum=0.9), tz.m.LR(0.1)],
         lambda g: O.SGD(g, lr=0.1, momentum=0.9), groups=({"lr": 0.1, **WD0}, {"lr": 0.05, **WD1})),
    Case("heavyball_as_sgd", lambda: [tz.m.HeavyBall(0.9), tz.m.LR(0.1)],
         lambda g: O.SGD(g, lr=0.1, momentum=0.9), groups=({"lr": 0.1}, {"lr": 0.05, "momentum": 0.5})),
    Case("nesterov_momentum_as_sgd", lambda: [tz.m.NesterovMomentum(0.9), tz.m.LR(0.1)],
         lambda g: O.SGD(g, lr=0.1, momentum=0.9, nesterov=True),
         groups=({"lr": 0.1}, {"lr": 0.05, "momentum": 0.5})),
    # Adam family
    Case("adam", lambda: [tz.m.Adam(), tz.m.LR(1e-2)], lambda g: O.Adam(g, lr=1e-2),
         groups=({"lr": 1e-2, "eps": 1e-6}, {"lr": 3e-2, "betas": (0.8, 0.99)})),
    Case("adam_amsgrad", lambda: [tz.m.Adam(amsgrad=True), tz.m.LR(1e-2)], lambda g: O.Adam(g, lr=1e-2, amsgrad=True),
         groups=({"lr": 1e-2, "eps": 1e-6}, {"lr": 3e-2, "amsgrad": False})),
    Case("adam_foreach_no_fused_kernel", lambda: [tz.m.Adam(fused=False), tz.m.LR(1e-2)], lambda g: O.Adam(g, lr=1e-2),
         groups=({"lr": 1e-2}, {"lr": 3e-2, "betas": (0.8, 0.99), "amsgrad": True})),
    Case("adam_weight_decay", lambda: [tz.m.WeightDecay(0.0), tz.m.Adam(), tz.m.LR(1e-2)],
         lambda g: O.Adam(g, lr=1e-2), groups=({"lr": 1e-2, **WD0}, {"lr": 3e-2, **WD1})),
    Case("adamw_preset", lambda: [tz.m.AdamW(lr=1e-2)], lambda g: O.AdamW(g, lr=1e-2),
         groups=({"lr": 1e-2, "weight_decay": 0.1}, {"lr": 3e-2, "weight_decay": 0.5, "amsgrad": True})),
    Case("adamax", lambda: [tz.m.Adamax(), tz.m.LR(2e-2)], lambda g: O.Adamax(g, lr=2e-2),
         groups=({"lr": 2e-2, "eps": 1e-4}, {"lr": 5e-2, "betas": (0.8, 0.99)})),
    Case("adamax_weight_decay", lambda: [tz.m.WeightDecay(0.0), tz.m.Adamax(), tz.m.LR(2e-2)],
         lambda g: O.Adamax(g, lr=2e-2), groups=({"lr": 2e-2, **WD0}, {"lr": 5e-2, **WD1})),
    Case("nadam", lambda: [tz.m.NAdam(), tz.m.LR(2e-2)], lambda g: O.NAdam(g, lr=2e-2),
         groups=({"lr": 2e-2, "momentum_decay": 1e-2}, {"lr": 5e-2, "betas": (0.8, 0.99), "eps": 1e-6})),
    Case("nadam_weight_decay", lambda: [tz.m.WeightDecay(0.0), tz.m.NAdam(), tz.m.LR(2e-2)],
         lambda g: O.NAdam(g, lr=2e-2), groups=({"lr": 2e-2, **WD0}, {"lr": 5e-2, **WD1})),
    Case("nadam_decoupled_weight_decay", lambda: [tz.m.NAdam(), tz.m.WeightDecay(0.0), tz.m.LR(2e-2)],
         lambda g: O.NAdam(g, lr=2e-2, decoupled_weight_decay=True),
         groups=({"lr": 2e-2, **WD0}, {"lr": 5e-2, **WD1})),
    Case("radam", lambda: [tz.m.RAdam(), tz.m.LR(1e-2)], lambda g: O.RAdam(g, lr=1e-2),
         groups=({"lr": 1e-2, "eps": 1e-6}, {"lr": 3e-2, "betas": (0.8, 0.99)})),
    Case("radam_weight_decay", lambda: [tz.m.WeightDecay(0.0), tz.m.RAdam(), tz.m.LR(1e-2)],
         lambda g: O.RAdam(g, lr=1e-2), groups=({"lr": 1e-2, **WD0}, {"lr": 3e-2, **WD1})),
    Case("radam_decoupled_weight_decay", lambda: [tz.m.RAdam(), tz.m.WeightDecay(0.0), tz.m.LR(1e-2)],
         lambda g: O.RAdam(g, lr=1e-2, decoupled_weight_decay=True),
         groups=({"lr": 1e-2, **WD0}, {"lr": 3e-2, "betas": (0.8, 0.99), **WD1})),
    # accumulators
    Case("adagrad", lambda: [tz.m.Adagrad(), tz.m.LR(0.1)], lambda g: O.Adagrad(g, lr=0.1),
         groups=({"lr": 0.1, "lr_decay": 0.01}, {"lr": 0.05, "eps": 1e-6})),
    Case("adagrad_initial_accumulator", lambda: [tz.m.Adagrad(initial_accumulator_value=0.1), tz.m.LR(0.1)],
         lambda g: O.Adagrad(g, lr=0.1, initial_accumulator_value=0.1),
         # torch reads initial_accumulator_value from its constructor only; torchzero also per group
         groups=({"lr": 0.1}, {"lr": 0.05, "eps": 1e-6})),
    Case("adagrad_weight_decay", lambda: [tz.m.WeightDecay(0.0), tz.m.Adagrad(), tz.m.LR(0.1)],
         lambda g: O.Adagrad(g, lr=0.1), groups=({"lr": 0.1, **WD0}, {"lr": 0.05, **WD1})),
    Case("rmsprop", lambda: [tz.m.RMSprop(), tz.m.LR(1e-2)], lambda g: O.RMSprop(g, lr=1e-2),
         groups=({"lr": 1e-2, "smoothing": 0.9, "centered": True}, {"lr": 5e-3, "momentum": 0.9}),
         ref_groups=({"lr": 1e-2, "alpha": 0.9, "centered": True}, {"lr": 5e-3, "momentum": 0.9})),
    Case("rmsprop_centered_momentum_weight_decay",
         lambda: [tz.m.WeightDecay(0.0), tz.m.RMSprop(centered=True, momentum=0.5), tz.m.LR(1e-2)],
         lambda g: O.RMSprop(g, lr=1e-2, centered=True, momentum=0.5),
         groups=({"lr": 1e-2, **WD0}, {"lr": 5e-3, "eps": 1e-4, **WD1})),
    Case("adadelta", lambda: [tz.m.Adadelta(), tz.m.LR(1.0)], lambda g: O.Adadelta(g, lr=1.0),
         groups=({"lr": 1.0, "rho": 0.8}, {"lr": 0.5, "eps": 1e-4})),
    Case("adadelta_weight_decay", lambda: [tz.m.WeightDecay(0.0), tz.m.Adadelta(), tz.m.LR(1.0)],
         lambda g: O.Adadelta(g, lr=1.0), groups=({"lr": 1.0, **WD0}, {"lr": 0.5, **WD1})),
    Case("rprop", lambda: [tz.m.Rprop()], lambda g: O.Rprop(g, lr=1e-2),
         groups=({"alpha": 1e-2}, {"alpha": 5e-2, "etas": (0.4, 1.3), "step_sizes": (1e-4, 0.1)}),
         ref_groups=({"lr": 1e-2}, {"lr": 5e-2, "etas": (0.4, 1.3), "step_sizes": (1e-4, 0.1)})),
    # Muon against torch.optim.Muon (matrices only; the gradient does not depend on the parameters so the
    # bfloat16 iteration sees bit-identical inputs on both sides)
    Case("muon", lambda: [tz.m.Muon(), tz.m.LR(0.02)], lambda g: O.Muon(g, lr=0.02, weight_decay=0.0),
         groups=({"lr": 0.02}, {"lr": 0.05, "momentum": 0.9, "nesterov": False, "adjust_lr_fn": "match_rms_adamw"}),
         dtypes=("f32", "f64"), shapes=M2D, coupling=0.0),
    Case("muon_weight_decay", lambda: [tz.m.Muon(), tz.m.WeightDecay(0.0), tz.m.LR(0.02)],
         lambda g: O.Muon(g, lr=0.02), groups=({"lr": 0.02, **WD0}, {"lr": 0.05, "momentum": 0.9, **WD1}),
         dtypes=("f32", "f64"), shapes=M2D, coupling=0.0),
    # no torch counterpart: written-out formulas
    Case("heavyball", lambda: [tz.m.HeavyBall(), tz.m.LR(0.1)], _ref(heavy_ball_rule, lr=0.1, momentum=0.9, dampening=0.0),
         groups=({"lr": 0.1, "momentum": 0.9, "dampening": 0.1}, {"lr": 0.05, "momentum": 0.5})),
    Case("nesterov_momentum", lambda: [tz.m.NesterovMomentum(), tz.m.LR(0.1)],
         _ref(nesterov_rule, lr=0.1, momentum=0.9, dampening=0.0),
         groups=({"lr": 0.1, "momentum": 0.9, "dampening": 0.1}, {"lr": 0.05, "momentum": 0.5})),
    Case("lion", lambda: [tz.m.Lion(), tz.m.LR(1e-2)], _ref(lion_rule, lr=1e-2, betas=(0.9, 0.99)),
         groups=({"lr": 1e-2}, {"lr": 3e-2, "betas": (0.8, 0.95)})),
    Case("orthogonalize", lambda: [tz.m.Orthogonalize(ns_dtype=None), tz.m.LR(0.02)],
         _ref(orthogonalize_rule, lr=0.02, **NS),
         groups=({"lr": 0.02}, {"lr": 0.05, "ns_steps": 3, "adjust_lr_fn": "match_rms_adamw"}),
         tol={"f32": {"atol": 1e-4, "rtol": 1e-4}, "c64": {"atol": 1e-4, "rtol": 1e-4}}),
    Case("muon_non_matrix_fallback", lambda: [tz.m.Muon(ns_dtype=None), tz.m.LR(0.02)],
         _ref(muon_rule, lr=0.02, momentum=0.95, nesterov=True, **NS),
         groups=({"lr": 0.02}, {"lr": 0.05, "momentum": 0.9, "nesterov": False, "adjust_lr_fn": "none"}),
         tol={"f32": {"atol": 1e-4, "rtol": 1e-4}, "c64": {"atol": 1e-4, "rtol": 1e-4}}),
]  # fmt: skip

# constructor arguments that must be refused, with a fragment of the message
ERROR_INPUTS: list[tuple[str, Any, str]] = [
    ("rprop_etas", lambda: tz.m.Rprop(etas=(1.5, 1.2)), "0 < eta_minus < 1 < eta_plus"),
    ("rprop_step_sizes", lambda: tz.m.Rprop(step_sizes=(1.0, 0.1)), "min <= max"),
    ("rmsprop_smoothing", lambda: tz.m.RMSprop(smoothing=1.5), "smoothing in [0, 1]"),
    ("adagrad_lr_decay", lambda: tz.m.Adagrad(lr_decay=-1.0), "lr_decay >= 0"),
    ("adamax_betas", lambda: tz.m.Adamax(betas=(1.0, 0.9)), "betas[0] in [0, 1)"),
    ("nadam_betas_pair", lambda: tz.m.NAdam(betas=(0.9,)), "a pair"),
    ("radam_eps", lambda: tz.m.RAdam(eps=-1.0), "eps >= 0"),
    ("lion_betas", lambda: tz.m.Lion(betas=(0.9, 1.0)), "betas[1] in [0, 1)"),
    ("adadelta_rho", lambda: tz.m.Adadelta(rho=2.0), "rho in [0, 1]"),
    ("muon_momentum", lambda: tz.m.Muon(momentum=1.0), "momentum in [0, 1)"),
    ("muon_adjust", lambda: tz.m.Muon(adjust_lr_fn="spectral"), "adjust_lr_fn in"),
    ("orthogonalize_dtype", lambda: tz.m.Orthogonalize(ns_dtype="float33"), "ns_dtype"),
    ("orthogonalize_steps", lambda: tz.m.Orthogonalize(ns_steps=100), "ns_steps"),
    ("heavyball_momentum", lambda: tz.m.HeavyBall(momentum=-0.1), "momentum >= 0"),
]
