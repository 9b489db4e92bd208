"""Stable import path of the FG weights parser (ARCHITECTURE.md, Core API); the code is in
models/fg_weights.py."""

from .models.fg_weights import parse_foreground_weights

__all__ = ["parse_foreground_weights"]
