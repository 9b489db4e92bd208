"""LayerFusionReharmonize: move, scale or flip layers of a decoded bundle and re-denoise only the
blended image from partway, so shadows and light follow the moved layers (LAYERS.md 2)."""

from __future__ import annotations

from typing import Any

from comfy_api.latest import io

from ..layerfusion_core.comfy_runtime.model_identity import check_same_model, check_vae_fits
from ..layerfusion_core.comfy_runtime.reharmonizing import check_kept, reharmonize
from ..layerfusion_core.layers.bundle import BLENDED_KEY, EFFECTS_KEY
from ..layerfusion_core.layers.document import check_bundle, check_image_index, fg_batch, layers_document
from ..layerfusion_core.layers.moves import LayerMove, bundle_placements
from ..layerfusion_core.options import ReharmonizeOptions, ReharmonizePreset
from .schema import layerfusion_schema
from .types import LayerBundleType, LayersDocumentType
from .widgets import enum_combo, output, seed_input, unit_float

MOVE_WIDGET_LAYERS = 2  # fg0_* and fg1_* widgets; any layer through the LAYERS document
MAX_OFFSET = 16384
DEFAULTS = ReharmonizeOptions()
LAYER_MOVE_FIELDS = tuple((f, getattr(LayerMove(), f)) for f in ("dx", "dy", "scale", "flip_h", "flip_v"))


def move_inputs(index: int) -> list:
    """The widgets moving FG layer ``index`` (0 = back-most)."""
    layer = f"FG layer {index} ({'the back-most' if index == 0 else 'the next one up'})"
    return [
        io.Int.Input(
            f"fg{index}_dx",
            default=0,
            min=-MAX_OFFSET,
            max=MAX_OFFSET,
            step=8,
            tooltip=f"Move {layer} right by this many pixels (negative: left). Whole latent cells (8 px) "
            "move exactly; others resample the layer's latent.",
        ),
        io.Int.Input(
            f"fg{index}_dy",
            default=0,
            min=-MAX_OFFSET,
            max=MAX_OFFSET,
            step=8,
            tooltip=f"Move {layer} down by this many pixels (negative: up).",
        ),
        io.Float.Input(
            f"fg{index}_scale",
            default=1.0,
            min=0.05,
            max=8.0,
            step=0.05,
            tooltip=f"Scale {layer} about the centre of its visible part (1 = unchanged).",
        ),
        io.Boolean.Input(f"fg{index}_flip_h", default=False, tooltip=f"Mirror {layer} left-right, in place."),
        io.Boolean.Input(
            f"fg{index}_flip_v", default=False, tooltip=f"Mirror {layer} upside down, in place."
        ),
    ]


class LayerFusionReharmonize(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        d = DEFAULTS
        return layerfusion_schema(
            node_id="LayerFusionReharmonize",
            search_aliases=("move layer", "relight layer", "shadow follows", "re-harmonize", "layer edit"),
            display_name="LayerFusion Re-harmonize",
            description="Moves, scales or flips layers of a decoded bundle and re-denoises only the blended "
            "image from p_start, the moved layers held in place until p_end, so shadows and light follow them "
            "without regenerating the scene. BG is unchanged, the layers' pixels are moved, never redrawn; "
            "what the re-harmonise added around them comes out as an effects layer.",
            inputs=[
                io.Model.Input(
                    "model", tooltip="The SDXL model of the run (its base weights: no FG weights)."
                ),
                io.Vae.Input("vae", tooltip="The SDXL VAE, to decode the re-harmonised blended image."),
                LayerBundleType.Input(
                    "bundle",
                    tooltip="A decoded bundle: LayerFusion Decode Layers' decoded output, or a previous "
                    "re-harmonise's.",
                ),
                enum_combo(
                    "preset",
                    ReharmonizePreset,
                    ReharmonizePreset.DEFAULT,
                    "default: p 0.40 / 0.60; stronger_shadows: 0.30 / 0.50 (more freedom, more change); "
                    "conservative: 0.50 / 0.70; custom: p_start and p_end below.",
                ),
                unit_float(
                    "p_start",
                    d.start_percent,
                    "With preset custom: re-denoising starts here (1 = not at all).",
                ),
                unit_float(
                    "p_end",
                    d.end_percent,
                    "With preset custom: the moved layers are held in place until here.",
                ),
                io.Boolean.Input(
                    "lock_foreground",
                    default=d.lock_foreground,
                    tooltip="Put the moved layers' own pixels over the result, so they stay exactly as generated.",
                ),
                seed_input(
                    "Noise seed: the per-step noise of ancestral/SDE samplers, and fresh noise for a "
                    "scaled or resampled layer (seed + k for layer k)."
                ),
                unit_float(
                    "effects_threshold",
                    d.effects_threshold,
                    "Differences from BG up to this stay out of the effects layer (0 = every difference: BG, "
                    "effects and the layers then rebuild the blended image).",
                ),
                *(widget for index in range(MOVE_WIDGET_LAYERS) for widget in move_inputs(index)),
                io.Int.Input(
                    "document_image",
                    default=0,
                    min=0,
                    max=4095,
                    tooltip="Which image of the batch the layers output holds (0 = the first).",
                ),
                LayersDocumentType.Input(
                    "layers",
                    optional=True,
                    tooltip="Optional LAYERS document (ComfyUI's layer system): items named like a layer give "
                    "its x, y, w/h and flips; our bg / effects / blended items are skipped.",
                ),
            ],
            outputs=[
                LayerBundleType.Output(
                    "reharmonized",
                    display_name="bundle",
                    tooltip="The moved, re-harmonised bundle (decoded), for LayerFusion Save Layers or "
                    "another re-harmonise.",
                ),
                output(io.Image, "blended", "The re-harmonised blended image, RGB."),
                output(
                    io.Image,
                    "effects",
                    "The effects layer, RGBA: what the re-harmonise added over BG around the layers (shadows, "
                    "reflections).",
                ),
                output(
                    io.Image,
                    "fg_layers",
                    "The moved FG layers as one RGBA batch, image-major, back to front.",
                ),
                LayersDocumentType.Output(
                    "document",
                    display_name="layers",
                    tooltip="LAYERS document of one image (document_image): bg, effects, the layers, blended "
                    "hidden.",
                ),
            ],
        )

    @classmethod
    def execute(
        cls,
        model,
        vae,
        bundle,
        document_image: int = 0,
        layers=None,
        **widgets: Any,
    ) -> io.NodeOutput:
        """``widgets``: preset, p_start, p_end, lock_foreground, seed, effects_threshold and the
        ``fg<k>_dx/dy/scale/flip_h/flip_v`` moves."""
        bundle = check_bundle(bundle, "bundle", decoded=True)
        check_kept(bundle)
        check_same_model(model, bundle)
        if not callable(getattr(vae, "decode", None)):
            raise TypeError(f"vae: expected a VAE, got {type(vae).__name__}")
        check_vae_fits(vae, bundle)
        check_image_index(bundle.num_images, document_image)
        options = ReharmonizeOptions.from_preset(
            *(
                widgets[name]
                for name in ("preset", "p_start", "p_end", "lock_foreground", "effects_threshold")
            )
        )
        widget_moves = {
            index: LayerMove(*(widgets.get(f"fg{index}_{f}", d) for f, d in LAYER_MOVE_FIELDS))
            for index in range(MOVE_WIDGET_LAYERS)
        }
        placements = bundle_placements(bundle, widget_moves, layers)
        moved = reharmonize(model, vae, bundle, placements, options, widgets["seed"])
        images = moved.images
        return io.NodeOutput(
            moved,
            images[BLENDED_KEY],
            images[EFFECTS_KEY],
            fg_batch(moved, images),
            layers_document(moved, document_image),
        )
