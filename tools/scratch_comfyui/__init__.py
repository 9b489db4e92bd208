"""A throwaway ComfyUI for tests and tools: ``server`` starts one on 127.0.0.1 with every folder
it writes under a scratch folder; ``editor`` drives its frontend in headless Chromium."""
