"""LayerFusionTextEncode: the FG, BG and BLENDED prompts with one CLIP."""

from __future__ import annotations

from comfy_api.latest import io

from ..layerfusion_core.comfy_runtime.conditioning import encode_triplet
from .schema import layerfusion_schema
from .widgets import output


class LayerFusionTextEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return layerfusion_schema(
            node_id="LayerFusionTextEncode",
            search_aliases=("layer prompt", "foreground background prompt"),
            display_name="LayerFusion Text Encode",
            description="Encodes the foreground, background and blended prompts. The foreground "
            "conditioning records where its end-of-text token is, for the content prior.",
            inputs=[
                io.Clip.Input("clip", tooltip="The SDXL CLIP (from the checkpoint loader)."),
                io.String.Input(
                    "fg_text", multiline=True, tooltip="What the transparent foreground layer shows."
                ),
                io.String.Input(
                    "bg_text", multiline=True, tooltip="The background scene, without the foreground."
                ),
                io.String.Input(
                    "blended_text",
                    multiline=True,
                    default="",
                    optional=True,
                    tooltip="Prompt of the blended image. Empty: '<fg_text>, <bg_text>'.",
                ),
            ],
            outputs=[
                output(io.Conditioning, "fg", "Foreground conditioning (carries its EOS index)."),
                output(io.Conditioning, "bg", "Background conditioning."),
                output(io.Conditioning, "blended", "Blended-image conditioning."),
            ],
        )

    @classmethod
    def execute(cls, clip, fg_text: str, bg_text: str, blended_text: str = "") -> io.NodeOutput:
        if clip is None:
            raise ValueError("clip: expected a CLIP, got None (does the checkpoint contain a text encoder?)")
        if not fg_text.strip():
            raise ValueError("fg_text: expected a foreground prompt, got an empty text")
        return io.NodeOutput(*encode_triplet(clip, fg_text, bg_text, blended_text))
