"""The pack's custom socket types."""

from comfy_api.latest import io

ForegroundWeightsType = io.Custom("LAYERFUSION_FG_WEIGHTS")
PriorOptionsType = io.Custom("LAYERFUSION_PRIOR_OPTIONS")
BlendOptionsType = io.Custom("LAYERFUSION_BLEND_OPTIONS")
LayoutOptionsType = io.Custom("LAYERFUSION_LAYOUT_OPTIONS")
DecoderType = io.Custom("LAYERFUSION_DECODER")
LayerPromptsType = io.Custom("LAYERFUSION_LAYER_PROMPTS")  # the layer-prompt chain (LayerChain)
LayerBundleType = io.Custom("LAYERFUSION_LAYERS")  # a layered run's bundle (LayerBundle)
# ComfyUI core's LAYERS document: its own type where the host has it (v0.33+), else the same
# type string, so links to core's layer nodes work wherever those exist.
LayersDocumentType = getattr(io, "Layers", None) or io.Custom("LAYERS")
