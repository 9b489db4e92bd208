"""The host adapter: the only part of the core that imports ComfyUI, and only inside
functions, so importing it needs no ComfyUI (``layerfusion_core/__init__.py`` never does).

- patching.py: what a run registers on its model clone (object patches, wrappers,
  callbacks, attention replaces and output patches, the prior pass);
- run_inputs.py: a run plan's inputs prepared once, on the model's device;
- sampling.py: a run plan (method/run_plan.py) sampled in lockstep through ComfyUI's samplers:
  prepare, patch, sample, collect;
- conditioning.py: CONDITIONING stacking per stream, EOS indices from CLIP's tokenizer;
- memory.py, casting.py: what a run holds as ComfyUI's model management sees it, and
  weights taken through the host's cast;
- loaders.py, model_folders.py, decoding.py, saving.py: LayerDiffuse files in
  models/layer_model/, the transparent decode, and saving through ComfyUI's save helpers.
"""

from ..method.run_plan import RunPlan, SamplerSettings
from .patching import PHASE_KEY, WRAPPER_KEY, LayerFusionPatch, patch_model
from .run_inputs import RunInputs, model_unet_layout, prepare_run
from .sampling import LayersResult, TripletResult, sample_layers, sample_triplet

__all__ = [
    "PHASE_KEY",
    "WRAPPER_KEY",
    "LayerFusionPatch",
    "LayersResult",
    "RunInputs",
    "RunPlan",
    "SamplerSettings",
    "TripletResult",
    "model_unet_layout",
    "patch_model",
    "prepare_run",
    "sample_layers",
    "sample_triplet",
]
