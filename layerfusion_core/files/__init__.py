"""Files on disk: the known model files, downloads, integrity checks, atomic and
never-overwriting writes, save-name checks. No torch maths, no ComfyUI; the bottom floor."""
