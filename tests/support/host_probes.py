"""Observing and steering ComfyUI at run time: how it batches cond/uncond into UNet calls,
the free memory its batching decision sees, and torch's thread count. Expects
``comfy_import.import_comfyui`` to have run."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch


class UNetCall(NamedTuple):
    batch: int
    """Rows in this call's input."""
    cond_or_uncond: tuple[int, ...]
    """Chunk order of this call (0 = positive, 1 = negative), each chunk a whole latent batch."""


def record_unet_calls(model_patcher: Any, key: str = "layerfusion_test_probe") -> tuple[Any, list[UNetCall]]:
    """Return a clone of ``model_patcher`` whose every diffusion-model call is appended to the
    returned list (through a DIFFUSION_MODEL wrapper, which composes with other wrappers)."""
    import comfy.patcher_extension

    calls: list[UNetCall] = []

    def probe(executor, x, timesteps, context, y, control, transformer_options, *args, **kwargs):
        calls.append(UNetCall(int(x.shape[0]), tuple(transformer_options.get("cond_or_uncond", ()))))
        return executor(x, timesteps, context, y, control, transformer_options, *args, **kwargs)

    clone = model_patcher.clone()
    clone.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, key, probe)
    return clone, calls


@contextlib.contextmanager
def low_free_memory(
    free_bytes: int = 1, callers: tuple[str, ...] | None = ("comfy.samplers",)
) -> Iterator[None]:
    """Make ComfyUI's cond batching see ``free_bytes`` free, so comfy.samplers puts the cond
    and uncond chunks into separate UNet calls (negative first).

    Older hosts ask ``comfy.model_management.get_free_memory`` from comfy.samplers; later
    ones ask the model's patcher (``ModelPatcher.get_free_memory``), whose only caller is
    that batching decision. By default only that decision sees the low figure; model
    loading and the attention chunking keep the real one, so results stay comparable with
    unsplit runs. ``callers=None`` lowers it for every caller of get_free_memory.
    """
    import comfy.model_management as mm
    import comfy.model_patcher as mp

    real = mm.get_free_memory

    def fake(dev=None, torch_free_too=False):
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if callers is not None and caller not in callers:
            return real(dev, torch_free_too)
        return (free_bytes, free_bytes) if torch_free_too else free_bytes

    patcher_real = getattr(mp.ModelPatcher, "get_free_memory", None)
    mm.get_free_memory = fake
    if patcher_real is not None:
        mp.ModelPatcher.get_free_memory = lambda self, device=None: free_bytes
    try:
        yield
    finally:
        mm.get_free_memory = real
        if patcher_real is not None:
            mp.ModelPatcher.get_free_memory = patcher_real


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run with ``count`` intra-op threads (restored afterwards)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def cancelled() -> Iterator[None]:
    """Cancel pressed: ComfyUI's interrupt flag set for the duration (cleared afterwards)."""
    import comfy.model_management as mm

    mm.interrupt_current_processing(True)
    try:
        yield
    finally:
        mm.interrupt_current_processing(False)
