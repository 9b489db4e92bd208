"""Stable import path of the priors (ARCHITECTURE.md, Core API); the code is in method/priors.py."""

from .method.priors import blend_masks, content_prior, structure_prior

__all__ = ["blend_masks", "content_prior", "structure_prior"]
