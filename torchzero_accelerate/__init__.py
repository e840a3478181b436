"""Hugging Face Accelerate integration for torchzero (filled in by the Accelerate adapter)."""
