"""The transparent decode under ComfyUI's memory management: the decoder is loaded with
``load_models_gpu`` and a working-memory estimate (so ComfyUI frees room first), with a
progress bar per pass and Cancel between passes."""

from __future__ import annotations

import torch

from ..models.transparent_vae import TTA_TRANSFORMS, estimate_memory_bytes
from .loaders import LoadedDecoder


def decode_rgba(
    decoder: LoadedDecoder, samples: torch.Tensor, image: torch.Tensor, tta: bool, sub_batch: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rgba [B, H, W, 4], rgb [B, H, W, 3], mask [B, H, W] = 1 - alpha), float32 on
    ComfyUI's intermediate device."""
    import comfy.model_management as mm
    import comfy.utils

    if isinstance(sub_batch, bool) or not isinstance(sub_batch, int) or sub_batch < 1:
        raise ValueError(f"sub_batch: expected a whole number of images of at least 1, got {sub_batch!r}")
    batch, height, width = image.shape[:3]
    mm.load_models_gpu(
        [decoder.patcher],
        memory_required=estimate_memory_bytes(height, width, min(sub_batch, batch), decoder.dtype),
    )
    passes = -(-batch // sub_batch) * (len(TTA_TRANSFORMS) if tta else 1)
    bar = comfy.utils.ProgressBar(passes)

    def progress(done: int, total: int) -> None:
        bar.update_absolute(done, total)
        mm.throw_exception_if_processing_interrupted()

    mm.throw_exception_if_processing_interrupted()
    pixel = image.movedim(-1, 1)  # [B, 3, H, W]
    out = decoder.patcher.model.decode(pixel, samples, tta=tta, sub_batch=sub_batch, progress=progress)
    out = out.to(mm.intermediate_device(), torch.float32).movedim(1, -1)  # [B, H, W, 4]: A, R, G, B
    alpha, rgb = out[..., 0], out[..., 1:]
    rgba = torch.cat((rgb, alpha.unsqueeze(-1)), dim=-1)
    return rgba, rgb.contiguous(), 1.0 - alpha
