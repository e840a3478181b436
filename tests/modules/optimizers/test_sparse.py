"""Sparse gradients: no torchzero module takes them (the layout and the sink work on dense tensors).

A step with a sparse gradient is a clear error that names the way out (``torch.optim.SparseAdam``) and changes
nothing; the documented recipe (``SparseAdam`` for the sparse parameters, a ``tz.Modular`` for the others)
equals one ``torch.optim`` pair doing the same.
"""

from __future__ import annotations

import pytest
import torch

import torchzero as tz


@pytest.mark.parametrize(
    "modules",
    [
        lambda: [tz.m.Adam(), tz.m.LR(1e-2)],
        lambda: [tz.m.Adafactor(), tz.m.LR(1e-2)],
        lambda: [tz.m.ASGD(), tz.m.LR(1e-2)],
    ],
    ids=["Adam", "Adafactor", "ASGD"],
)
def test_sparse_gradient_is_a_clear_error_naming_sparse_adam(modules):
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = tz.Modular(emb.parameters(), *modules())
    emb(torch.tensor([1, 2])).sum().backward()
    before = emb.weight.detach().clone()
    with pytest.raises(RuntimeError, match=r"sparse gradients.*torch\.optim\.SparseAdam"):
        opt.step()
    assert torch.equal(emb.weight, before) and len(opt.state) == 0


def test_sparse_adam_beside_a_modular_equals_torch():
    torch.manual_seed(0)
    emb, head = torch.nn.Embedding(20, 4, sparse=True), torch.nn.Linear(4, 1)
    emb2, head2 = torch.nn.Embedding(20, 4, sparse=True), torch.nn.Linear(4, 1)
    emb2.load_state_dict(emb.state_dict())
    head2.load_state_dict(head.state_dict())
    opts = [
        torch.optim.SparseAdam(emb.parameters(), lr=1e-2),
        tz.Modular(head.parameters(), tz.m.Adam(), tz.m.LR(1e-2)),
    ]
    refs = [torch.optim.SparseAdam(emb2.parameters(), lr=1e-2), torch.optim.Adam(head2.parameters(), lr=1e-2)]
    for step in range(5):
        idx = torch.tensor([step, step + 3, 7])
        for e, h, optimizers in ((emb, head, opts), (emb2, head2, refs)):
            for o in optimizers:
                o.zero_grad()
            h(e(idx)).square().mean().backward()
            for o in optimizers:
                o.step()
    torch.testing.assert_close(emb.weight, emb2.weight, rtol=0, atol=0)
    torch.testing.assert_close(head.weight, head2.weight)
    torch.testing.assert_close(head.bias, head2.bias)
