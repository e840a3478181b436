"""PyTorch Lightning integration for torchzero (filled in by the Lightning adapter)."""
