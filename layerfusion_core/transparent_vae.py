"""Stable import path of the transparent decoder (ARCHITECTURE.md, Core API); the code is in
models/transparent_vae.py."""

from .models.transparent_vae import TransparentDecoder

__all__ = ["TransparentDecoder"]
