"""The module registry of the contract suite: one entry per public class of ``tz.m``.

Every class in ``tz.m.__all__`` (except the base classes ``Module``, ``Transform`` and ``Chain``) needs
an :class:`Entry`: a factory for a sensible chain around the module (a gradient approximator first, a
line search after a direction, ``LR`` where the module leaves the step size open), per-group settings
that differ between the two param groups where the module allows it, and what the module promises
for complex parameters.  ``test_contract.py`` runs every entry through the same checks, so a new
module is covered as soon as it has an entry, and fails ``test_every_public_module_has_an_entry``
until it does.

Expected failures are data too: ``xfail`` maps a check name to the bug that breaks it (strict, so
the entry must be updated when the bug is fixed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

import torchzero as tz

BASE_CLASSES = frozenset({"Module", "Transform", "Chain"})

CHECKS = (
    "run",  # f32/f64: finite params, loss does not blow up, returned loss is f(x0)
    "bf16",  # the same in bfloat16
    "roundtrip",  # mid-run state_dict -> save -> load(weights_only) -> fresh optimizer equals uninterrupted
    "reference",  # foreach path == reference (per-tensor) path
    "noarg",  # no-argument closure == closure(backward)
    "needs_closure",  # step() without a closure raises before changing anything
    "zero_grad",  # an exactly zero gradient gives finite parameters
    "nonfinite",  # a NaN loss raises NonFiniteLossError before changing anything; NaN trials are rejected
    "closure_error",  # an exception from the closure at a trial point leaves the params at x0
    "empty_param",  # a parameter with no elements changes nothing for the others
    "noncontiguous",  # a transposed-view parameter equals its contiguous copy
    "complex",  # complex64 params: equal to the real-view problem, or a clear error
    "set_params",  # the same with settings given by module.set_params
    "set_params_other",  # ... or by another module's set_params (keys it does not declare)
    "split",  # per-group settings: one optimizer over two groups == one optimizer per tensor
    "no_grad",  # a parameter whose .grad is None in a step keeps its value and state
    "tensor_lr",  # a 0-dim tensor lr equals the float lr, with no host sync
    "differentiable",  # differentiable=True takes the same steps and backpropagates to the initial params
    "join",  # a param group added mid-run is optimized too (or a clear error for whole-vector methods)
    "uniform",  # modules declaring uniform_settings refuse differing group settings at build
    "host_sync",  # no tensor is read back to Python on the step path (no closure needed)
    "deepcopy",  # copy.deepcopy(opt) mid-run continues like the original
    "state",  # every tensor lives in opt.state; global_state holds Python primitives only
    "reset",  # reset() (where a module has one) makes it behave like a fresh module
    "repr",
)


@dataclasses.dataclass(frozen=True)
class Entry:
    """How to test one module class.

    Attributes:
        name: the class name in ``tz.m``.
        chain: builds fresh modules for the chain (the module under test with its neighbours).
        groups: settings of the two param groups (different where the module allows it); a single dict puts
            every parameter in one group.
        complex: ``"equiv"`` (complex64 params behave exactly like their real views, as the foreach layer
            promises), ``"finite"`` (complex is supported but defined differently from the real view:
            only finiteness and progress are checked) or ``"raises:<text>"`` (the step must raise an error
            whose message contains ``<text>``, before changing anything).
        noarg: ``"equal"`` (a no-argument closure gives the same result) or ``"raises:<text>"``.
        no_grad: ``"skip"`` (a parameter whose ``.grad`` is None is left alone, value and state) or
            ``"raises:<text>"`` (whole-vector methods: a clear error before anything changes).
        tensor_lr: ``"no_sync"`` (a tensor lr stays on the device) or ``"equal"`` (only the result is checked:
            a wrapped torch optimizer reads a tensor lr on the host itself).
        differentiable: ``"ok"`` (``Modular(differentiable=True)`` works) or ``"raises:<text>"`` (a clear error
            when the optimizer is built).
        set_params: ``"ok"`` (settings given by ``set_params`` reach their parameters) or ``"raises:<text>"`` (a
            clear error when the optimizer is built).
        join: ``"ok"`` (a param group added mid-run is optimized) or ``"raises:<text>"``.
        noncontiguous: whether non-contiguous parameters are supported (torch.optim.LBFGS flattens grads with
            ``view(-1)`` and rejects them, so ``WrapClosure`` around it cannot).
        deepcopy: whether ``copy.deepcopy(opt)`` is supported (torch.optim.LBFGS loses ``_params`` in a deepcopy,
            so ``WrapClosure`` around it cannot).
        separable: the rule is per element or per tensor, so two groups in one optimizer equal one
            optimizer per tensor (global norms, line searches and whole-vector methods are not).
        xfail: ``{check: reason}`` for checks that fail because of a known bug.
        options: keyword arguments of ``tz.Modular`` (``reuse_evaluation``, ``fuse``).
        variant: tells apart several entries of one class (another configuration of it).
        steps: number of steps.
        max_growth: the final loss may be at most this multiple of the initial loss.
        rounding_gain: how much the rule amplifies rounding errors of the loss (finite differences divide a
            loss difference by their step ``eps``, so a last-bit change of the loss moves the update by about
            ``1/eps`` of it); comparisons of two summation orders widen their float32 tolerance by this factor.
    """

    name: str
    chain: Callable[[], list[Any]]
    groups: Sequence[dict[str, Any]] = ({}, {})
    complex: str = "equiv"
    noarg: str = "equal"
    no_grad: str = "skip"
    tensor_lr: str = "no_sync"
    differentiable: str = "ok"
    set_params: str = "ok"
    join: str = "ok"
    noncontiguous: bool = True
    deepcopy: bool = True
    separable: bool = False
    xfail: dict[str, str] = dataclasses.field(default_factory=dict)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    variant: str = ""
    steps: int = 5
    max_growth: float = 1.5
    rounding_gain: float = 1.0

    @property
    def id(self) -> str:
        return f"{self.name}-{self.variant}" if self.variant else self.name


class FixedStep(tz.m.LineSearch):
    """The smallest concrete ``LineSearch``: a fixed step when the update is a descent direction."""

    def __init__(self, t: float = 0.1) -> None:
        super().__init__({"t": t})

    def search(self, line: Any, loss0: float, slope0: float, settings: dict[str, Any]) -> float:
        line(settings["t"])  # one trial (loss only), so the probe's move/restore is exercised
        return settings["t"] if slope0 < 0 else 0.0


DENSE_JOIN = "raises:parameters changed since the state was made"
"""dense quasi-Newton holds one n x n matrix: a new group needs a new optimizer (a clear error)"""

m = tz.m
E = Entry
REGISTRY: list[Entry] = [
    # ------------------------------------------------------------------ learning rate
    E("LR", lambda: [m.LR(0.05)], ({"lr": 0.05}, {"lr": 0.02}), separable=True),
    E("LR", lambda: [m.Adam(), m.LR(0.05, scheduler_cls=lambda o: torch.optim.lr_scheduler.StepLR(o, 2, 0.5))],
      ({"lr": 0.05}, {"lr": 0.02}), separable=True, variant="scheduler",
      # the scheduler changes the groups' lr; an lr from set_params would win over it, so LR refuses it at build
      set_params="raises:set_params"),
    # ------------------------------------------------------------------ optimizers
    E("SGD", lambda: [m.SGD(momentum=0.9, nesterov=True), m.LR(0.05)], ({"momentum": 0.9}, {"momentum": 0.5}),
      separable=True),
    E("Adadelta", lambda: [m.Adadelta(), m.LR(1.0)], ({"rho": 0.9}, {"rho": 0.8}), separable=True, max_growth=1.01),
    E("Adagrad", lambda: [m.Adagrad(), m.LR(0.1)],
      ({"lr_decay": 0.0}, {"lr_decay": 0.1, "initial_accumulator_value": 0.1}), separable=True),
    E("Adam", lambda: [m.Adam(), m.LR(0.05)], ({"betas": (0.9, 0.99)}, {"eps": 1e-6, "amsgrad": True}),
      separable=True),
    E("Adam", lambda: [m.Adam(fused=False), m.Mul(1.0), m.LR(0.05)], ({"betas": (0.9, 0.99)}, {"amsgrad": True}),
      separable=True, variant="unfused"),
    E("Adam", lambda: [m.Adam(), m.LR(0.05)], ({"betas": (0.9, 0.99)}, {"amsgrad": True}), separable=True,
      options={"fuse": False}, variant="fuse_off"),
    E("AdamW", lambda: [m.AdamW(lr=0.05)], ({"weight_decay": 0.1}, {"weight_decay": 0.0, "lr": 0.02}),
      separable=True),
    E("Adamax", lambda: [m.Adamax(), m.LR(0.05)], ({"betas": (0.9, 0.99)}, {}), separable=True),
    E("HeavyBall", lambda: [m.HeavyBall(0.9), m.LR(0.02)], ({"momentum": 0.9}, {"momentum": 0.5, "dampening": 0.1}),
      separable=True),
    E("NesterovMomentum", lambda: [m.NesterovMomentum(0.9), m.LR(0.02)], ({"momentum": 0.8}, {"momentum": 0.5}),
      separable=True),
    E("Lion", lambda: [m.Lion(), m.LR(0.01)], ({"betas": (0.9, 0.99)}, {"betas": (0.95, 0.98)}), separable=True),
    # complex: Orthogonalize/Muon decide by the complex tensor's ndim (a complex vector is passed through, its
    # (n, 2) real view would be orthogonalized), as documented, so only finiteness and progress are checked
    E(
        "Split",
        lambda: [m.Split(lambda p: p.ndim >= 2, true=[m.Adam()], false=[m.SGD(momentum=0.9)]), m.LR(0.02)],
        ({}, {"lr": 0.01}),
        complex="finite",  # the filter sees the parameter: a complex vector's real view is a matrix (ndim 2)
    ),
    E("Muon", lambda: [m.Muon(), m.LR(0.02)], ({"momentum": 0.9}, {"nesterov": False}), separable=True,
      complex="finite", max_growth=2.0),
    E("NAdam", lambda: [m.NAdam(), m.LR(0.05)], ({"momentum_decay": 4e-3}, {"momentum_decay": 1e-2}),
      separable=True),
    E("Orthogonalize", lambda: [m.Orthogonalize(), m.LR(0.02)], ({"ns_steps": 5}, {"adjust_lr_fn": "none"}),
      separable=True, complex="finite", max_growth=2.0),
    E("RAdam", lambda: [m.RAdam(), m.LR(0.05)], ({"eps": 1e-8}, {"eps": 1e-6}), separable=True),
    E("RMSprop", lambda: [m.RMSprop(), m.LR(0.01)], ({"centered": True}, {"momentum": 0.5}), separable=True),
    E("Rprop", lambda: [m.Rprop(alpha=0.01)], ({"etas": (0.5, 1.2)}, {"etas": (0.4, 1.1), "alpha": 0.02}),
      separable=True),
    # ------------------------------------------------------------------ transforms
    E("EMA", lambda: [m.EMA(0.9), m.LR(0.05)], ({"momentum": 0.9}, {"debiased": True}), separable=True),
    E("Add", lambda: [m.Add(m.Grad(), alpha=0.5), m.LR(0.05)], ({"alpha": 0.5}, {"alpha": 1.0}), separable=True),
    E("Sub", lambda: [m.Sub([m.Grad(), m.Mul(0.5)]), m.LR(0.05)], ({"alpha": 1.0}, {"alpha": 0.5}),
      separable=True),
    E("Mul", lambda: [m.Mul(0.5), m.LR(0.1)], ({"other": 0.5}, {"other": 0.2}), separable=True),
    E("Div", lambda: [m.Div(2.0), m.LR(0.1)], ({"other": 2.0}, {"other": 5.0}), separable=True),
    E("Lerp", lambda: [m.Adam(), m.Lerp(m.Grad(), 0.1), m.LR(0.05)], ({"weight": 0.1}, {"weight": 0.5}),
      separable=True),
    E("Lerp", lambda: [m.Adam(), m.Lerp([m.Grad(), m.HeavyBall(0.5)], 0.3), m.LR(0.05)],
      ({"weight": 0.1}, {"weight": 0.5}), separable=True, variant="stateful_branch"),
    E("Neg", lambda: [m.Neg(), m.Mul(-1.0), m.LR(0.05)], ({}, {"lr": 0.02}), separable=True),
    E("Cautious", lambda: [m.Adam(), m.Cautious(), m.LR(0.05)], ({"normalize": True}, {"normalize": False}),
      separable=True),
    # complex: real and imaginary parts are averaged separately (documented), unlike the real view's layout
    E("Centralize", lambda: [m.Centralize(), m.SGD(), m.LR(0.05)], ({"min_ndim": 2}, {"min_ndim": 3}),
      complex="finite", separable=True),
    E("ClipNorm", lambda: [m.ClipNorm(0.5), m.LR(0.05)], ({"max_norm": 0.5}, {"max_norm": 1.0})),
    E("Normalize", lambda: [m.Normalize(0.5), m.LR(0.1)], ({"norm": 0.5}, {"norm": 1.0})),
    E("ClipNorm", lambda: [m.ClipNorm(0.5, per_tensor=True), m.LR(0.05)], ({"max_norm": 0.5}, {"max_norm": 1.0}),
      separable=True, variant="per_tensor"),
    E("Normalize", lambda: [m.Normalize(0.5, ord=1, per_tensor=True), m.LR(0.05)], ({"norm": 0.5}, {"norm": 1.0}),
      separable=True, variant="per_tensor_l1"),
    E("ClipValue", lambda: [m.ClipValue(0.1), m.LR(0.05)], ({"value": 0.1}, {"value": 0.05}), separable=True),
    E("Clone", lambda: [m.Clone(), m.SGD(), m.LR(0.05)], ({}, {"lr": 0.02}), separable=True),
    E("Grad", lambda: [m.Adam(), m.Grad(), m.LR(0.05)], ({}, {"lr": 0.02}), separable=True),
    E("Sign", lambda: [m.Sign(), m.LR(0.01)], ({}, {"lr": 0.02}), separable=True),
    E("WeightDecay", lambda: [m.Adam(), m.LR(0.05), m.WeightDecay(0.1, scale_by_lr=True)],
      ({"weight_decay": 0.1}, {"weight_decay": 0.0}), separable=True),
    # ------------------------------------------------------------------ line searches
    E("LineSearch", lambda: [m.SGD(), FixedStep(0.1)]),
    E("Backtracking", lambda: [m.LBFGS(history_size=3), m.Backtracking()]),
    E("Backtracking", lambda: [m.Normalize(), m.Backtracking(adaptive=True)], variant="adaptive"),
    E("ArmijoTrials", lambda: [m.SGD(momentum=0.5), m.ArmijoTrials(n_trials=4)]),
    E("StrongWolfe", lambda: [m.LBFGS(history_size=3), m.StrongWolfe(max_evals=8)]),
    E("StrongWolfe", lambda: [m.SGD(), m.StrongWolfe(c2=0.1, adaptive=True)], variant="adaptive"),
    E("StrongWolfe", lambda: [m.LBFGS(history_size=3), m.StrongWolfe(max_evals=8)], variant="reuse",
      options={"reuse_evaluation": True}),
    E("Backtracking", lambda: [m.LBFGS(history_size=3), m.Backtracking()], variant="reuse",
      options={"reuse_evaluation": True}),
    # ------------------------------------------------------------------ quasi-Newton and second order
    E("LBFGS", lambda: [m.LBFGS(history_size=3), m.LR(0.2)], ({}, {"lr": 0.1})),
    E("LBFGS", lambda: [m.LBFGS(history_size=2, scale_first=False), m.LR(0.2)], ({}, {"lr": 0.1}),
      variant="no_scale_first"),
    E("BFGS", lambda: [m.BFGS(), m.LR(0.2)], ({}, {"lr": 0.1}), no_grad="raises:grad", join=DENSE_JOIN),
    E("BFGS", lambda: [m.BFGS(scale_init=False), m.LR(0.2)], ({}, {"lr": 0.1}), variant="no_scale_init",
      no_grad="raises:grad", join=DENSE_JOIN),
    E("SR1", lambda: [m.SR1(), m.Backtracking()], join=DENSE_JOIN),
    E("ExactNewton", lambda: [m.ExactNewton(damping=1e-3), m.Backtracking()], complex="raises:real parameters only",
      noarg="raises:backward argument"),
    E("NewtonCG", lambda: [m.NewtonCG(max_iters=4), m.Backtracking()], complex="raises:real parameters only",
      noarg="raises:backward argument"),
    # ------------------------------------------------------------------ gradient approximation
    E("FDM", lambda: [m.FDM(eps=1e-3), m.LR(0.05)], ({}, {"lr": 0.02}), rounding_gain=1e2),
    E(
        "RandomizedFDM",
        lambda: [m.RandomizedFDM(n_samples=2), m.LR(0.02)],
        ({}, {"lr": 0.01}),
        max_growth=3.0,
        rounding_gain=1e2,
    ),
    E("ForwardGradient", lambda: [m.ForwardGradient(n_samples=2), m.LR(0.02)], ({}, {"lr": 0.01}),
      noarg="raises:backward argument", max_growth=3.0),
    # ------------------------------------------------------------------ smoothing
    E("SAM", lambda: [m.SAM(rho=0.05), m.SGD(momentum=0.9), m.LR(0.05)], ({}, {"lr": 0.02})),
    E("SAM", lambda: [m.SAM(rho=0.5, adaptive=True), m.SGD(), m.LR(0.05)], ({}, {"lr": 0.02}), variant="asam"),
    # ------------------------------------------------------------------ external
    # torch.optim.Adam reads its step count back to Python (torch's own host sync), so Wrap is tested on SGD
    # fused with LR, a tensor lr reaches torch.optim.SGD, whose foreach step reads it on the host (torch's sync)
    # differentiable: the wrapped torch optimizer refuses non-leaf parameters itself
    E("Wrap", lambda: [m.Wrap(torch.optim.SGD, lr=1.0, momentum=0.9, dampening=0.0), m.LR(0.05)],
      ({"momentum": 0.9}, {"momentum": 0.5, "dampening": 0.1}), separable=True, tensor_lr="equal",
      differentiable="raises:non-leaf"),
    E("Wrap", lambda: [m.Wrap(torch.optim.SGD, lr=1.0, momentum=0.9, dampening=0.0), m.Mul(1.0), m.LR(0.05)],
      ({"momentum": 0.9}, {"momentum": 0.5, "dampening": 0.1}), separable=True, variant="measured",
      differentiable="raises:non-leaf"),
    # torch.optim.LBFGS takes a single param group
    E("WrapClosure", lambda: [m.ClipNorm(10.0), m.WrapClosure(torch.optim.LBFGS, history_size=3, max_iter=3)],
      groups=({},), join="raises:one param_group", noncontiguous=False, deepcopy=False),
    E("WrapClosure", lambda: [m.WrapClosure(torch.optim.LBFGS, history_size=3, max_iter=3), m.LR(0.5)],
      groups=({},), variant="measured", join="raises:one param_group", noncontiguous=False, deepcopy=False),
    # ------------------------------------------------------------------ algos-c: ScheduleFree, Lookahead, Sophia
    # tensor_lr: the averaging weights are a running max and a ratio of Python numbers, so a tensor lr is read on
    # the host (documented); only the result is checked
    E("ScheduleFreeSGD", lambda: [m.ScheduleFreeSGD(momentum=0.9, warmup_steps=2), m.LR(0.05)],
      ({"momentum": 0.9}, {"momentum": 0.5, "weight_decay": 1e-2, "lr": 0.02}), separable=True,
      tensor_lr="equal"),
    E("ScheduleFreeAdamW", lambda: [m.ScheduleFreeAdamW(warmup_steps=2), m.LR(0.05)],
      ({"betas": (0.9, 0.99)}, {"betas": (0.8, 0.999), "weight_decay": 1e-2, "r": 0.5}), separable=True,
      tensor_lr="equal"),
    # a group's "alpha" would reach Adam's alpha too (every module declaring it), so the groups differ in k only
    E("Lookahead", lambda: [m.Adam(), m.LR(0.05), m.Lookahead(k=2, alpha=0.5)], ({"k": 2}, {"k": 3}), separable=True),
    E("Lookahead", lambda: [m.SGD(momentum=0.9), m.LR(0.05), m.Lookahead(k=3, alpha=0.8)], ({"k": 3}, {"k": 2}),
      separable=True, variant="sgd"),
    E("Sophia", lambda: [m.Sophia(update_period=2), m.LR(0.05)], ({"betas": (0.9, 0.99)}, {"rho": 0.05, "lr": 0.02}),
      complex="raises:real parameters only", noarg="raises:backward argument"),
    # ------------------------------------------------------------------ ADOPT, AdEMAMix, MARS, Prodigy, DAdaptAdam
    E("ADOPT", lambda: [m.ADOPT(), m.LR(0.05)], ({"betas": (0.9, 0.999)}, {"eps": 1e-4}), separable=True),
    E("AdEMAMix", lambda: [m.AdEMAMix(t_alpha_beta3=4), m.LR(0.05)], ({"alpha": 5.0}, {"alpha": 2.0, "t_alpha_beta3": None}),
      separable=True),
    E("MARS", lambda: [m.MARS(), m.LR(0.02)], ({"gamma": 0.025}, {"mars_type": "lion", "ams_bound": True}),
      separable=True),
    # one d over all parameters (not separable); lr and weight decay are settings of the rule (no LR module)
    E("Prodigy", lambda: [m.Prodigy(d0=1e-3)], ({"eps": 1e-8}, {"eps": 1e-6, "weight_decay": 0.01})),
    E("DAdaptAdam", lambda: [m.DAdaptAdam(d0=1e-3)], ({"layer_scale": 1.0}, {"layer_scale": 0.5, "weight_decay": 0.01})),
    E("DAdaptAdam", lambda: [m.DAdaptAdam(d0=1e-3, decouple=True)], ({"eps": 1e-8}, {"weight_decay": 0.01}),
      variant="decoupled"),
    # ------------------------------------------------------------------ issue 13: ASGD, Adafactor, Lamb, LARS
    E("ASGD", lambda: [m.ASGD(t0=1.0), m.LR(0.05)], ({"lambd": 1e-2}, {"power": 0.5, "t0": 2.0}), separable=True),
    E("Adafactor", lambda: [m.Adafactor(), m.LR(0.05)], ({"d": 1.0}, {"beta2_decay": -0.5, "eps": (None, 1e-2)}),
      separable=True, complex="raises:real parameters only"),
    E("Adafactor", lambda: [m.Adafactor(), m.WeightDecay(0.1), m.LR(0.05)], ({"weight_decay": 0.1}, {"d": 2.0}),
      separable=True, complex="raises:real parameters only", variant="weight_decay"),
    E("Lamb", lambda: [m.Lamb(weight_decay=0.1), m.LR(0.05)], ({"weight_decay": 0.1}, {"betas": (0.8, 0.99)}),
      separable=True),
    E("Lamb", lambda: [m.Lamb(weight_decouple=False, fixed_decay=True), m.LR(0.05)],
      ({"weight_decay": 0.1}, {"weight_decouple": True, "weight_decay": 0.05}), separable=True, variant="options"),
    # complex: the trust ratio is for parameters of two or more dimensions, a complex vector's real view is a matrix
    E("LARS", lambda: [m.LARS(weight_decay=0.01, trust_coefficient=0.1), m.LR(0.05)],
      ({"momentum": 0.9}, {"nesterov": True, "weight_decay": 0.1}), separable=True, complex="finite"),
    # ------------------------------------------------------------------ issue 13: Shampoo
    E("Shampoo", lambda: [m.Shampoo(), m.LR(0.05)], ({"matrix_eps": 1e-6}, {"momentum": 0.5, "weight_decay": 0.01}),
      separable=True, complex="raises:real parameters only"),
    E("Shampoo", lambda: [m.Shampoo(momentum=0.9, preconditioning_compute_steps=2), m.LR(0.05)],
      ({"matrix_eps": 1e-4}, {"preconditioning_compute_steps": 1}), separable=True,
      complex="raises:real parameters only", variant="momentum_every_2"),
    # ------------------------------------------------------------------ SOAP
    E("SOAP", lambda: [m.SOAP(precondition_frequency=2), m.LR(0.05)],
      ({"precondition_1d": True}, {"betas": (0.9, 0.99), "weight_decay": 0.0, "max_precondition_dim": 2}),
      separable=True, complex="raises:real parameters only"),
    E("SOAP", lambda: [m.SOAP(merge_dims=True, max_precondition_dim=4, normalize_gradient=True), m.LR(0.05)],
      ({"precondition_frequency": 1}, {"shampoo_beta": 0.5, "correct_bias": False}), separable=True,
      complex="raises:real parameters only", variant="options"),
    # ------------------------------------------------------------------ issue 13: PSGDKron
    # not separable: one update decision per step, noise seeded by the tensor's index; seed=0 (torch's global
    # generator otherwise differs between the compared runs); a float probability keeps the decision off tensors
    E("PSGDKron", lambda: [m.PSGDKron(preconditioner_update_probability=0.5, seed=0), m.LR(0.05)],
      ({"beta": 0.9}, {"beta": 0.8, "weight_decay": 0.1, "memory_save_mode": "all_diag"}),
      complex="raises:real parameters only"),
]  # fmt: skip


def entries() -> dict[str, Entry]:
    """Entries by id (class name, and variant where a class has several)."""
    out: dict[str, Entry] = {}
    for e in REGISTRY:
        assert e.id not in out, f"two registry entries with the id {e.id}; give one a variant"
        out[e.id] = e
    return out


def public_modules() -> list[str]:
    """Names in ``tz.m.__all__`` that are module classes (base classes excluded)."""
    names = []
    for name in tz.m.__all__:
        obj = getattr(tz.m, name)
        if isinstance(obj, type) and issubclass(obj, tz.m.Module) and name not in BASE_CLASSES:
            names.append(name)
    return names


# ---------------------------------------------------------------------------- the problem
class Problem:
    """A small linear least-squares problem in two param groups: ``W`` (3x2) and ``b`` (2,).

    ``loss = mean |X W + b - Y|^2``.  With a complex dtype every tensor is complex and the loss is the
    mean squared modulus; ``real_view=True`` builds the same problem on real parameters of shape
    ``(..., 2)`` (the loss reads them with ``view_as_complex``), which is what the foreach layer must be
    equivalent to.
    """

    def __init__(self, dtype: torch.dtype, *, real_view: bool = False, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.complex = dtype.is_complex

        def rnd(*shape: int, scale: float = 1.0) -> Tensor:
            t = torch.randn(*shape, generator=gen, dtype=torch.float64) * scale
            if self.complex:
                t = torch.complex(t, torch.randn(*shape, generator=gen, dtype=torch.float64) * scale)
            return t.to(dtype)

        self.X = rnd(6, 3)
        self.Y = rnd(6, 2)
        W, b = rnd(3, 2, scale=0.5), rnd(2, scale=0.5)
        self.real_view = real_view
        if real_view:
            assert self.complex
            W, b = torch.view_as_real(W).clone(), torch.view_as_real(b).clone()
        self.params = [W.requires_grad_(), b.requires_grad_()]

    def groups(self, settings: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        if len(settings) == 1:
            return [{"params": list(self.params), **settings[0]}]
        return [{"params": [p], **s} for p, s in zip(self.params, settings, strict=True)]

    def loss(self) -> Tensor:
        W, b = self.params
        if self.real_view:
            W, b = torch.view_as_complex(W), torch.view_as_complex(b)
        r = self.X @ W + b - self.Y
        if self.complex:
            return (r.real**2 + r.imag**2).mean()
        return (r**2).mean()

    def closure(self, style: str = "backward") -> Callable[..., Tensor]:
        params = self.params

        def zero() -> None:
            for p in params:
                if style == "inplace" and p.grad is not None:
                    p.grad.zero_()  # opt.zero_grad(set_to_none=False)
                else:
                    p.grad = None

        if style in ("backward", "inplace"):

            def closure(backward: bool = True) -> Tensor:
                loss = self.loss()
                if backward:
                    zero()
                    loss.backward()
                return loss

            return closure

        def noarg() -> Tensor:
            zero()
            loss = self.loss()
            loss.backward()
            return loss

        return noarg

    def snapshot(self) -> list[Tensor]:
        return [p.detach().clone() for p in self.params]

    def load(self, values: Sequence[Tensor]) -> None:
        with torch.no_grad():
            for p, v in zip(self.params, values, strict=True):
                p.copy_(v)
