"""LayerFusionDecodeLayers: a layer bundle decoded (VAE, then the transparent decoder for the
FG layers) into images, masks and ComfyUI core's LAYERS document."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..layerfusion_core.comfy_runtime.layer_decoding import decode_layers
from ..layerfusion_core.layers.bundle import BG_KEY, BLENDED_KEY, EFFECTS_KEY
from ..layerfusion_core.layers.document import check_bundle, check_image_index, fg_batch, layers_document
from .checks import check_decoder
from .schema import layerfusion_schema
from .types import DecoderType, LayerBundleType, LayersDocumentType
from .widgets import output, transparent_decode_inputs


class LayerFusionDecodeLayers(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return layerfusion_schema(
            node_id="LayerFusionDecodeLayers",
            search_aliases=("decode layers", "layers to images", "layered image"),
            display_name="LayerFusion Decode Layers",
            description="Decodes every layer of a bundle: the FG layers to RGBA (VAE, then the transparent "
            "decoder), BG and BLENDED to RGB; also the masks and a LAYERS document for ComfyUI's "
            "layer nodes (BG, the FG layers back to front, BLENDED hidden on top).",
            inputs=[
                LayerBundleType.Input("bundle", tooltip="From LayerFusion Layers Sampler."),
                io.Vae.Input("vae", tooltip="The SDXL VAE (from the checkpoint loader)."),
                DecoderType.Input("decoder", tooltip="From LayerFusionTransparentDecoderLoader."),
                *transparent_decode_inputs(),
                io.Int.Input(
                    "document_image",
                    default=0,
                    min=0,
                    max=4095,
                    tooltip="Which image of the batch the LAYERS document holds (0 = the first).",
                ),
            ],
            outputs=[
                output(
                    LayerBundleType, "decoded", "The bundle with its images, for LayerFusion Save Layers."
                ),
                output(
                    io.Image,
                    "fg_layers",
                    "The FG layers as one RGBA batch, image-major: image n's layers back to front, "
                    "row n * K + k.",
                ),
                output(io.Image, "bg", "Background, RGB."),
                output(io.Image, "blended", "Blended image, RGB."),
                output(io.Mask, "soft_masks", "Soft masks (1 = object), in the order of fg_layers."),
                output(io.Mask, "hard_masks", "Hard masks (1 = object), in the order of fg_layers."),
                output(
                    LayersDocumentType,
                    "layers",
                    "LAYERS document of one image (document_image) for ComfyUI's layer nodes.",
                ),
            ],
        )

    @classmethod
    def execute(
        cls, bundle, vae, decoder, tta: bool, sub_batch: int, document_image: int = 0
    ) -> io.NodeOutput:
        bundle = check_bundle(bundle, "bundle", decoded=False)
        if EFFECTS_KEY in bundle.images:
            raise ValueError(
                "bundle: this bundle was re-harmonised: its moved layers and effects layer are already "
                "images, and decoding its latents again would undo the move (a resampled layer's latent "
                "does not give its pixels back). Take LayerFusion Re-harmonize's own outputs (bundle, "
                "blended, effects, fg_layers, layers) to Save Layers or further"
            )
        if not callable(getattr(vae, "decode", None)):
            raise TypeError(f"vae: expected a VAE, got {type(vae).__name__}")
        check_decoder(decoder)
        check_image_index(bundle.num_images, document_image)
        decoded = decode_layers(bundle, vae, decoder, tta, sub_batch)
        images = decoded.images
        masks = [fg_batch(decoded, {k: m[which] for k, m in decoded.masks.items()}) for which in (0, 1)]
        return io.NodeOutput(
            decoded,
            fg_batch(decoded, images),
            images[BG_KEY],
            images[BLENDED_KEY],
            *(m.to(torch.float32) for m in masks),
            layers_document(decoded, document_image),
        )
