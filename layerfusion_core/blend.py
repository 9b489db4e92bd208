"""Stable import path of Eq. 1 / Eq. 2 (ARCHITECTURE.md, Core API); the code is in method/blend.py."""

from .method.blend import blend_attention

__all__ = ["blend_attention"]
