"""ComfyUI-LayerFusion: harmonised foreground (RGBA) / background / blended layers on SDXL.

ComfyUI loads this folder with importlib under a name derived from its path, and pytest
imports this file while collecting tests on machines without ComfyUI. So nothing here
imports comfy or uses a relative import at module level: both happen inside
``comfy_entrypoint``.
"""

WEB_DIRECTORY = "./web"

__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]


async def comfy_entrypoint():
    """ComfyUI's V3 entry point: returns the extension that lists our nodes."""
    from .nodes import LayerFusionExtension

    return LayerFusionExtension()
