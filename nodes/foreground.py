"""LayerFusionForegroundLoader: LayerDiffuse's FG attention weights from models/layer_model/."""

from __future__ import annotations

from comfy_api.latest import io

from ..layerfusion_core.comfy_runtime.loaders import load_foreground_weights
from ..layerfusion_core.files.known import DEFAULT_FG_FILE, FileKind
from ..layerfusion_core.options import WeightApplication, require_finite
from .file_widgets import auto_download_input, check_layer_choice, default_choice, layer_file_choices
from .schema import layerfusion_schema
from .types import ForegroundWeightsType
from .widgets import output


class LayerFusionForegroundLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = layer_file_choices(FileKind.FG_LORA, FileKind.FG_OFFSETS)
        return layerfusion_schema(
            node_id="LayerFusionForegroundLoader",
            search_aliases=("layerdiffuse", "transparent attention", "foreground lora"),
            display_name="LayerFusion Foreground Weights Loader",
            description="Loads LayerDiffuse's transparent-foreground attention weights (LoRA "
            "layer_xl_transparent_attn or diffusers offsets ld_diffusers_sdxl_attn) for the FG stream only.",
            inputs=[
                io.Combo.Input(
                    "weights_name",
                    options=files,
                    default=default_choice(files, DEFAULT_FG_FILE),
                    tooltip="A file in models/layer_model/: layer_xl_transparent_attn.safetensors "
                    "(LayerDiffusion/layerdiffusion-v1) or ld_diffusers_sdxl_attn.safetensors "
                    "(lllyasviel/LayerDiffuse_Diffusers).",
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=-2.0,
                    max=2.0,
                    step=0.05,
                    tooltip="Scale of the FG weight delta (0 = the plain base model for FG).",
                ),
                io.Combo.Input(
                    "application",
                    options=[m.value for m in WeightApplication],
                    default=WeightApplication.ON_THE_FLY.value,
                    tooltip="on_the_fly: add x·down·up for the FG rows (no extra memory). merged: the FG "
                    "rows go through a merged weight copy (+1.9 GB at fp16 for SDXL), built on first use and "
                    "kept across runs until ComfyUI unloads the FG weights.",
                ),
                auto_download_input(),
            ],
            outputs=[output(ForegroundWeightsType, "fg_weights")],
        )

    @classmethod
    def validate_inputs(cls, weights_name: str, auto_download: bool = False) -> bool | str:
        return check_layer_choice("weights_name", weights_name, auto_download)

    @classmethod
    def execute(
        cls, weights_name: str, strength: float, application: str, auto_download: bool = False
    ) -> io.NodeOutput:
        strength = require_finite("strength", strength)  # before reading a large file
        weights = load_foreground_weights(weights_name, auto_download)
        return io.NodeOutput(weights.with_settings(strength, WeightApplication(application)))
