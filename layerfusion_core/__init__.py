"""The LayerFusion engine.

Pure torch except ``comfy_runtime`` (the host adapter), which this package never imports
at module level, so core tests run without ComfyUI.
"""
