"""The transparent decoder nodes: load it from models/layer_model/, and turn a FG latent plus
its ordinary VAE decode into RGBA (the loading and the decode under ComfyUI's memory
management live in the host adapter: comfy_runtime/loaders.py and decoding.py)."""

from __future__ import annotations

from typing import Any

import torch
from comfy_api.latest import io

from ..layerfusion_core.comfy_runtime.decoding import decode_rgba
from ..layerfusion_core.comfy_runtime.loaders import load_transparent_decoder
from ..layerfusion_core.files.known import DEFAULT_DECODER_FILE, FileKind
from ..layerfusion_core.models.transparent_vae import pixel_size
from .checks import check_decoder
from .file_widgets import auto_download_input, check_layer_choice, default_choice, layer_file_choices
from .schema import layerfusion_schema
from .types import DecoderType
from .widgets import output, transparent_decode_inputs


def check_decode_inputs(decoder: Any, latent: Any, image: Any) -> torch.Tensor:
    """Validate the decode node's inputs; return the latent samples [B, 4, H/8, W/8]."""
    check_decoder(decoder)
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
    expected = pixel_size(samples.shape[2:])
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
                output(DecoderType, "decoder", "The transparent decoder, for LayerFusionTransparentDecode.")
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
                *transparent_decode_inputs(),
            ],
            outputs=[
                output(
                    io.Image,
                    "rgba",
                    "[B, H, W, 4]: straight (not premultiplied) RGB plus alpha; save it as RGBA PNG.",
                ),
                output(io.Image, "rgb", "[B, H, W, 3]: the foreground's straight RGB, without alpha."),
                output(
                    io.Mask,
                    "mask",
                    "1 - alpha (1 = transparent), the convention of ComfyUI's LoadImage mask; "
                    "invert it for a mask of the object.",
                ),
            ],
        )

    @classmethod
    def execute(cls, decoder, latent, image, tta: bool, sub_batch: int) -> io.NodeOutput:
        samples = check_decode_inputs(decoder, latent, image)
        return io.NodeOutput(*decode_rgba(decoder, samples, image, tta, sub_batch))
