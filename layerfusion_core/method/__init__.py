"""The method in pure torch: streams and call layouts, priors, blending and sharing, the
recorder, mask sources, the attention policy and controller, the run plan, regions, latent
pins, re-harmonise. No ComfyUI: it sees tensors and dataclasses, never a hook name."""
