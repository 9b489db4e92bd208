"""The pack's ComfyUI nodes (V3 schema). Each module holds a few thin io.ComfyNode classes
that validate inputs and make one core call; this file only lists them."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from ..layerfusion_core.comfy_runtime.model_folders import register_model_folders

register_model_folders()  # before any schema builds its file lists

from .composite import LayerFusionAlphaComposite  # noqa: E402
from .decoder import LayerFusionTransparentDecode, LayerFusionTransparentDecoderLoader  # noqa: E402
from .decompose import LayerFusionDecompose  # noqa: E402
from .encode import LayerFusionTextEncode  # noqa: E402
from .foreground import LayerFusionForegroundLoader  # noqa: E402
from .layer_decode import LayerFusionDecodeLayers  # noqa: E402
from .layers import LayerFusionLayerPrompt, LayerFusionLayersSampler  # noqa: E402
from .options import LayerFusionLayoutOptions, LayerFusionMaskBlender, LayerFusionPriorExtractor  # noqa: E402
from .reharmonize import LayerFusionReharmonize  # noqa: E402
from .sampler import LayerFusionTripletSampler  # noqa: E402
from .save import LayerFusionSaveLayers  # noqa: E402

NODES: list[type[io.ComfyNode]] = [
    LayerFusionTextEncode,
    LayerFusionForegroundLoader,
    LayerFusionPriorExtractor,
    LayerFusionMaskBlender,
    LayerFusionTripletSampler,
    LayerFusionTransparentDecoderLoader,
    LayerFusionTransparentDecode,
    LayerFusionAlphaComposite,
    LayerFusionSaveLayers,
    LayerFusionLayerPrompt,
    LayerFusionLayoutOptions,
    LayerFusionLayersSampler,
    LayerFusionDecodeLayers,
    LayerFusionReharmonize,
    LayerFusionDecompose,
]


class LayerFusionExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES
