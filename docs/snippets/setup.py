import torch
from torch import nn

import torchzero as tz  # noqa: F401 - used by the examples that follow

torch.manual_seed(0)


class Net(nn.Module):
    """A small model with two parts, so that examples can treat them differently."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(10, 32), nn.ReLU())
        self.decoder = nn.Linear(32, 2)

    def forward(self, x):
        return self.decoder(self.encoder(x))


model = Net()
inputs, targets = torch.randn(256, 10), torch.randint(0, 2, (256,))
dataloader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, targets), batch_size=32)
loss_fn = nn.CrossEntropyLoss()
