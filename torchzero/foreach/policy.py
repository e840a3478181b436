"""Which kernel path a write takes: torch's fused kernels, the foreach ops, or the per-tensor reference.

One function decides, from the tensors' device and dtype, the scale's type and the thread's mode, so every
module that has a fused kernel (Adam's ``torch._fused_adam_``) takes it under the same conditions.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from . import ops, shard


def fused_ok(
    device: torch.device,
    dtype: torch.dtype,
    scale: Any,
    dtypes: Collection[torch.dtype],
    tensors: Sequence[Tensor] = (),
    sharded_ok: bool = True,
    *,
    state_dtype: torch.dtype | None = None,
) -> bool:
    """True when a fused kernel may run for tensors on ``device`` of ``dtype`` with step size ``scale``.

    ``sharded_ok=False`` says the kernel has no sharding rule for DTensors (FSDP2 shards): ``tensors`` holding
    one then take the foreach path.

    Not for a tensor scale (a capturable-style lr takes the foreach path), not in :func:`ops.reference_mode`,
    not with autograd on (differentiable mode: fused kernels have no derivative) and not under torch.compile
    (Inductor fuses the foreach ops itself).

    Not when state is kept in another dtype than the tensors (``state_dtype``: a fused kernel would compute on
    the stored state in its dtype, without the upcast the foreach path does).  Compensated writes
    (``param_update``) do not stop it: the sink gives such a kernel a zero buffer to write its step into and
    adds the step to the parameters itself (``core.sink.write_kernel``); a kernel that wrote the parameters
    directly would bypass that, so a module runs a fused kernel only through ``seg.emit_kernel``.
    """
    return (
        not isinstance(scale, torch.Tensor)
        and dtype in dtypes
        and device.type in _get_fused_kernels_supported_devices()
        and not ops.is_reference_mode()
        and not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
        and (sharded_ok or not shard.any_dtensor(tensors))
        and (state_dtype is None or state_dtype == dtype)
    )
