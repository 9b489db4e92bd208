"""The pack's custom socket types."""

from comfy_api.latest import io

ForegroundWeightsType = io.Custom("LAYERFUSION_FG_WEIGHTS")
PriorOptionsType = io.Custom("LAYERFUSION_PRIOR_OPTIONS")
BlendOptionsType = io.Custom("LAYERFUSION_BLEND_OPTIONS")
DecoderType = io.Custom("LAYERFUSION_DECODER")
