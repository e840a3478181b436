"""Run a demo chain through the Lightning and Accelerate adapters (filled in when they land)."""

from __future__ import annotations
