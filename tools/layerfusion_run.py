#!/usr/bin/env python3
"""Run a ComfyUI workflow headless on a running ComfyUI and collect the files it saves.

    python3 tools/layerfusion_run.py --workflow workflows/<name>.json \\
        --fg "a glass teapot" --bg "a sunny kitchen table" --seed 7 --out layers/

Loads a UI-format workflow (as ComfyUI saves it, as shipped in workflows/; an API-format
prompt works too), converts it to the API format with the server's /object_info, applies the
overrides, queues it (POST /prompt), shows progress from the websocket on stderr, then
downloads every file the save nodes wrote into --out and prints their paths on stdout.

Standard library only, plus aiohttp (which ComfyUI's environment has) for live progress over
the websocket; without aiohttp it polls /history instead. It never imports ComfyUI or torch.
Exit status: 0 done, 1 the job failed or was refused, 2 bad arguments or workflow,
3 server unreachable. The code is in the layerfusion_headless package beside this script.
"""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:  # also when run as `python -m tools.layerfusion_run`
    sys.path.insert(0, _HERE)

from layerfusion_headless.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
