import torch

import torchzero as tz


def test_adam_lr_matches_torch_adam():
    p = torch.randn(10, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    opt = tz.Modular([p], tz.m.Adam(), tz.m.LR(1e-2))
    ref = torch.optim.Adam([q], lr=1e-2)
    for _ in range(5):
        g = torch.randn(10)
        p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    torch.testing.assert_close(p, q)
