"""Weight files as objects: the FG weights (LoRA or offsets) with their per-row deltas and
merged copies, and the transparent decoder. Pure torch; no ComfyUI."""
