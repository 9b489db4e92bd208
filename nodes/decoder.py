"""The transparent decoder: load it from models/layer_model/, and turn a FG latent plus its
ordinary VAE decode into RGBA.

The decoder joins ComfyUI's memory management like a VAE: it sits in a ModelPatcher on
ComfyUI's VAE devices (``vae_device``/``vae_offload_device``, so --cpu-vae and --gpu-only
apply) and is loaded with ``load_models_gpu`` and a working-memory estimate before each
decode, which lets ComfyUI evict or offload other models first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from comfy_api.latest import io

from ..layerfusion_core.files.known import DEFAULT_DECODER_FILE, FileKind, unmark
from ..layerfusion_core.models.transparent_vae import (
    LATENT_SCALE,
    TTA_TRANSFORMS,
    TransparentDecoder,
    estimate_memory_bytes,
)
from .downloads import (
    auto_download_input,
    check_layer_choice,
    default_choice,
    layer_file_choices,
    read_layer_file,
)
from .schema import layerfusion_schema
from .types import DecoderType

log = logging.getLogger(__name__)

# The dtypes ComfyUI may pick for the decoder, best first, through vae_dtype() (which also
# honours --fp16-vae/--bf16-vae/--fp32-vae). fp16 is allowed, unlike for SDXL's own VAE:
# every block normalises its input (GroupNorm), and LayerDiffuse itself runs this decoder
# in fp16. On CPU vae_dtype gives float32.
WORKING_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
SD15_MARKERS = ("sd15", "sd_15", "sd1.5")


@dataclass(frozen=True)
class LoadedDecoder:
    """What flows through a LAYERFUSION_DECODER socket."""

    patcher: Any
    """comfy.model_patcher.ModelPatcher whose ``.model`` is a TransparentDecoder."""
    name: str
    """The file it came from."""
    dtype: torch.dtype


def load_transparent_decoder(name: str, auto_download: bool = False) -> LoadedDecoder:
    """Read ``models/layer_model/<name>`` strictly into a TransparentDecoder in a ModelPatcher.

    FileNotFoundError says where to download a missing file; ValueError names the file and
    the missing, unexpected or mis-shaped keys.
    """
    import comfy.model_management as mm
    import comfy.model_patcher

    name = unmark(name)
    if any(marker in name.lower() for marker in SD15_MARKERS):
        log.warning(
            "%s looks like LayerDiffuse's SD1.5 transparent decoder; LayerFusion's FG latents come "
            "from SDXL, for which %s is the matching decoder",
            name,
            DEFAULT_DECODER_FILE,
        )
    state_dict = read_layer_file("decoder_name", name, auto_download)
    try:
        decoder = TransparentDecoder.from_state_dict(state_dict)
    except ValueError as err:
        raise ValueError(f"decoder_name: {name} is not a LayerDiffuse transparent decoder: {err}") from err

    load_device = mm.vae_device()
    dtype = mm.vae_dtype(load_device, list(WORKING_DTYPES))
    decoder = decoder.to(dtype)
    patcher = comfy.model_patcher.ModelPatcher(
        decoder, load_device=load_device, offload_device=mm.vae_offload_device()
    )
    log.info("transparent decoder %s: load device %s, dtype %s", name, load_device, dtype)
    return LoadedDecoder(patcher, name, dtype)


def decode_rgba(
    decoder: LoadedDecoder, latent: dict, image: torch.Tensor, tta: bool, sub_batch: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(rgba [B, H, W, 4], rgb [B, H, W, 3], mask [B, H, W] = 1 - alpha), float32 on
    ComfyUI's intermediate device."""
    import comfy.model_management as mm
    import comfy.utils

    samples = check_decode_inputs(decoder, latent, image)
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


def check_decode_inputs(decoder: Any, latent: Any, image: Any) -> torch.Tensor:
    """Validate the decode node's inputs; return the latent samples [B, 4, H/8, W/8]."""
    if not isinstance(decoder, LoadedDecoder) and not hasattr(getattr(decoder, "patcher", None), "model"):
        raise TypeError(
            f"decoder: expected the output of LayerFusionTransparentDecoderLoader, got {type(decoder).__name__}"
        )
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor):
        raise TypeError(f"latent: expected a LATENT (a dict with 'samples'), got {type(latent).__name__}")
    if samples.ndim != 4 or samples.shape[1] != 4:
        raise ValueError(
            f"latent: expected an SDXL latent [B, 4, H/8, W/8], got shape {list(samples.shape)} "
            "(the transparent decoder works on 4-channel SD/SDXL latents)"
        )
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[-1] != 3:
        shape = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(
            f"image: expected an RGB IMAGE [B, H, W, 3] (the VAE decode of the FG latent), got {shape}"
        )
    if image.shape[0] != samples.shape[0]:
        raise ValueError(
            f"batch: image has {image.shape[0]} images, latent {samples.shape[0]}; connect the VAE "
            "decode of this same FG latent"
        )
    expected = [samples.shape[2] * LATENT_SCALE, samples.shape[3] * LATENT_SCALE]
    if list(image.shape[1:3]) != expected:
        raise ValueError(
            f"image size: expected {expected[0]}x{expected[1]} (H x W, 8 x the latent's "
            f"{samples.shape[2]}x{samples.shape[3]}), got {image.shape[1]}x{image.shape[2]}; connect "
            "the VAE decode of this same FG latent, uncropped and unscaled"
        )
    return samples


class LayerFusionTransparentDecoderLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = layer_file_choices(FileKind.DECODER)
        return layerfusion_schema(
            node_id="LayerFusionTransparentDecoderLoader",
            search_aliases=("layerdiffuse decoder", "transparent vae", "rgba decoder"),
            display_name="LayerFusion Transparent Decoder Loader",
            description="Loads LayerDiffuse's transparent VAE decoder (turns a FG latent and its "
            "ordinary VAE decode into RGBA). Placed and offloaded by ComfyUI like a VAE.",
            inputs=[
                io.Combo.Input(
                    "decoder_name",
                    # Known decoders not downloaded yet are listed too: running then says where to
                    # get them, or downloads them with auto_download.
                    options=files,
                    default=default_choice(files, DEFAULT_DECODER_FILE),
                    tooltip="A file in models/layer_model/: vae_transparent_decoder.safetensors "
                    "(LayerDiffusion/layerdiffusion-v1) or ld_diffusers_sdxl_vae_transparent_decoder"
                    ".safetensors (lllyasviel/LayerDiffuse_Diffusers); both hold the same decoder.",
                ),
                auto_download_input(),
            ],
            outputs=[
                DecoderType.Output(
                    "decoder",
                    display_name="decoder",
                    tooltip="The transparent decoder, for LayerFusionTransparentDecode.",
                )
            ],
        )

    @classmethod
    def validate_inputs(cls, decoder_name: str, auto_download: bool = False) -> bool | str:
        return check_layer_choice("decoder_name", decoder_name, auto_download)

    @classmethod
    def execute(cls, decoder_name: str, auto_download: bool = False) -> io.NodeOutput:
        return io.NodeOutput(load_transparent_decoder(decoder_name, auto_download))


class LayerFusionTransparentDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return layerfusion_schema(
            node_id="LayerFusionTransparentDecode",
            search_aliases=("layerdiffuse decode", "rgba", "transparent image", "alpha"),
            display_name="LayerFusion Transparent Decode",
            description="FG latent + its ordinary VAE decode -> RGBA image (straight colour), its "
            "RGB and a mask (1 - alpha), with LayerDiffuse's transparent decoder.",
            inputs=[
                DecoderType.Input("decoder", tooltip="From LayerFusionTransparentDecoderLoader."),
                io.Latent.Input(
                    "latent", tooltip="The FG latent (the sampler's fg output), as sampled: not rescaled."
                ),
                io.Image.Input(
                    "image",
                    tooltip="The ordinary VAE Decode of that same FG latent (same batch, 8x its size).",
                ),
                io.Boolean.Input(
                    "tta",
                    default=True,
                    tooltip="Test-time augmentation: decode the 8 flips/rotations and take the per-pixel "
                    "median (cleaner alpha, 8x the time).",
                ),
                io.Int.Input(
                    "sub_batch",
                    default=1,
                    min=1,
                    max=64,
                    tooltip="Images decoded together; higher is faster on a large GPU, 1 needs the least memory.",
                ),
            ],
            outputs=[
                io.Image.Output(
                    "rgba",
                    display_name="rgba",
                    tooltip="[B, H, W, 4]: straight (not premultiplied) RGB plus alpha; save it as RGBA PNG.",
                ),
                io.Image.Output(
                    "rgb",
                    display_name="rgb",
                    tooltip="[B, H, W, 3]: the foreground's straight RGB, without alpha.",
                ),
                io.Mask.Output(
                    "mask",
                    display_name="mask",
                    tooltip="1 - alpha (1 = transparent), the convention of ComfyUI's LoadImage mask; "
                    "invert it for a mask of the object.",
                ),
            ],
        )

    @classmethod
    def execute(cls, decoder, latent, image, tta: bool, sub_batch: int) -> io.NodeOutput:
        return io.NodeOutput(*decode_rgba(decoder, latent, image, tta, sub_batch))
