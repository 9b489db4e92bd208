"""LayerFusionPriorExtractor and LayerFusionMaskBlender: the method's options as nodes."""

from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from ..layerfusion_core.options import (
    BlendMode,
    BlendOptions,
    ContentTiming,
    LayerSet,
    LayoutOptions,
    PriorOptions,
    PriorOrientation,
    PriorTiming,
    SharingMode,
    SparsityFormula,
)
from .schema import layerfusion_schema
from .types import BlendOptionsType, LayoutOptionsType, PriorOptionsType
from .widgets import enum_combo, output, unit_float

PRIOR_DEFAULTS = PriorOptions()
BLEND_DEFAULTS = BlendOptions()


class LayerFusionPriorExtractor(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        d = PRIOR_DEFAULTS
        return layerfusion_schema(
            node_id="LayerFusionPriorExtractor",
            search_aliases=("attention prior", "layerfusion options"),
            display_name="LayerFusion Prior Extractor",
            description="How the structure (self-attention) and content (cross-attention EOS) priors "
            "are taken from the foreground stream. Unconnected, the sampler uses these defaults.",
            inputs=[
                io.String.Input(
                    "structure_layer",
                    default=d.structure_layer,
                    tooltip="'last' = the UNet's last self-attention (output.5.1 on SDXL), or a block like 'output.4.1'.",
                ),
                enum_combo(
                    "formula",
                    SparsityFormula,
                    d.formula,
                    "Per-token sparsity of the head-mean self-attention row.",
                ),
                enum_combo(
                    "orientation",
                    PriorOrientation,
                    d.orientation,
                    "dense: dense attention rows are the object (the paper). sparse: the opposite. "
                    "auto: decided once per run by agreement with the content prior.",
                ),
                enum_combo(
                    "timing",
                    PriorTiming,
                    d.timing,
                    "prior_pass: one extra FG forward per step (faithful). previous: reuse the previous step's maps "
                    "(faster; the first step runs a prior pass). previous_only: the same with no prior pass "
                    "at all (fastest; the first step does not blend).",
                ),
                enum_combo(
                    "content_timing",
                    ContentTiming,
                    d.content_timing,
                    "Content prior used by self-attention blending: this step's prior pass, or the previous step's.",
                ),
                io.Int.Input(
                    "auto_vote_evaluations",
                    default=d.auto_vote_evaluations,
                    min=1,
                    max=20,
                    tooltip="orientation=auto: evaluations that vote; blending starts after the vote.",
                ),
                io.Int.Input(
                    "chunk_size",
                    default=d.chunk_size,
                    min=64,
                    max=16384,
                    step=64,
                    tooltip="Query rows per chunk of the structure prior (memory O(chunk x tokens)).",
                ),
            ],
            outputs=[output(PriorOptionsType, "prior_options")],
        )

    @classmethod
    def execute(cls, **values) -> io.NodeOutput:
        try:
            return io.NodeOutput(PriorOptions(**values))
        except ValueError as err:
            raise ValueError(f"LayerFusionPriorExtractor: {err}") from err


class LayerFusionMaskBlender(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        d = BLEND_DEFAULTS
        return layerfusion_schema(
            node_id="LayerFusionMaskBlender",
            search_aliases=("attention blending", "attention sharing", "layerfusion options"),
            display_name="LayerFusion Mask Blender",
            description="How the soft/hard masks are built and where they blend attention between the "
            "foreground and blended streams, and how the blended and background streams share attention.",
            inputs=[
                io.Float.Input(
                    "coefficient",
                    default=d.coefficient,
                    min=0.1,
                    max=100.0,
                    step=0.1,
                    tooltip="k of the hard mask sigmoid(k (soft - threshold)); 10 in the paper.",
                ),
                unit_float("threshold", d.threshold, "tau of the hard mask."),
                enum_combo(
                    "mode",
                    BlendMode,
                    d.mode,
                    "generative: blend attention (the paper's method). alpha: no blending; composite the "
                    "FG layer over BG afterwards (the blended latent then repeats BG).",
                ),
                io.String.Input(
                    "layers",
                    default=d.layers.spec,
                    tooltip="Blocks that blend and share: 'all', or groups input/middle/output and blocks like 'output.5.1', comma-separated.",
                ),
                io.Boolean.Input(
                    "self_attention", default=d.layers.self_attention, tooltip="Blend at self-attention."
                ),
                io.Boolean.Input(
                    "cross_attention", default=d.layers.cross_attention, tooltip="Blend at cross-attention."
                ),
                unit_float(
                    "start_percent", d.start_percent, "Sampling progress where blending and sharing start."
                ),
                unit_float("end_percent", d.end_percent, "Sampling progress where blending and sharing end."),
                enum_combo(
                    "sharing",
                    SharingMode,
                    d.sharing,
                    "Attention sharing between blended and background. masked: both see both, but the "
                    "background cannot see the object; bidirectional: no masking; one_directional: only "
                    "blended sees background; off.",
                ),
            ],
            outputs=[output(BlendOptionsType, "blend_options")],
        )

    @classmethod
    def execute(cls, layers: str, self_attention: bool, cross_attention: bool, **blend: Any) -> io.NodeOutput:
        """``blend``: coefficient, threshold, mode, start_percent, end_percent, sharing."""
        try:
            layer_set = LayerSet(layers, self_attention, cross_attention)
            options = BlendOptions(
                coefficient=blend["coefficient"], threshold=blend["threshold"], mode=BlendMode(blend["mode"]),
                layers=layer_set, start_percent=blend["start_percent"], end_percent=blend["end_percent"],
                sharing=SharingMode(blend["sharing"]),
            )  # fmt: skip
        except ValueError as err:
            raise ValueError(f"LayerFusionMaskBlender: {err}") from err
        return io.NodeOutput(options)


LAYOUT_DEFAULTS = LayoutOptions()


class LayerFusionLayoutOptions(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        d = LAYOUT_DEFAULTS
        return layerfusion_schema(
            node_id="LayerFusionLayoutOptions",
            search_aliases=("layer layout", "layer box options", "layerfusion options"),
            display_name="LayerFusion Layout Options",
            description="How the Layers Sampler lays out several foreground layers: their noise, and how "
            "a layer with a box or mask is kept inside it early in the run.",
            inputs=[
                io.Boolean.Input(
                    "per_layer_noise",
                    default=d.per_layer_noise,
                    tooltip="Foreground layer k > 0 starts from the noise of seed + k (one noise for every "
                    "layer stacks the objects in one place).",
                ),
                unit_float(
                    "couple_end_percent",
                    d.couple_end_percent,
                    "Until here a boxed layer's cross-attention uses its prompt inside the box and the empty "
                    "prompt outside, so its object is drawn in the box (0 = off).",
                ),
                unit_float(
                    "paste_end_percent",
                    d.paste_end_percent,
                    "Until here the blended latent is pasted into a boxed layer inside its box, so the object "
                    "lands at the same place in the layer and the blended image (0 = off).",
                ),
                unit_float(
                    "keep_percent",
                    d.keep_percent,
                    "Every layer's latent at this percent is kept in the bundle: LayerFusion Re-harmonize "
                    "re-noises moved layers with the noise it implies (1 = keep nothing).",
                ),
            ],
            outputs=[output(LayoutOptionsType, "layout_options")],
        )

    @classmethod
    def execute(
        cls,
        per_layer_noise: bool,
        couple_end_percent: float,
        paste_end_percent: float,
        keep_percent: float = LAYOUT_DEFAULTS.keep_percent,
    ) -> io.NodeOutput:
        try:
            return io.NodeOutput(
                LayoutOptions(per_layer_noise, couple_end_percent, paste_end_percent, keep_percent)
            )
        except ValueError as err:
            raise ValueError(f"LayerFusionLayoutOptions: {err}") from err
