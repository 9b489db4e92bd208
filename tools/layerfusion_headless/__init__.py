"""The headless run of a ComfyUI workflow (``tools/layerfusion_run.py``), one job per module:

- ``errors``: exit codes and the exceptions that carry one-line messages;
- ``widgets``: reading ``/object_info``: a node type's inputs and its ``widgets_values`` layout;
- ``ui_to_api``: UI-format workflow -> API-format prompt (links, reroutes, bypass, primitives);
- ``overrides``: ``--fg``/``--seed``/... and ``--set NODE.INPUT=VALUE`` on an API prompt (a new
  ``--width``/``--height`` also scales the boxes and moves on that canvas);
- ``workflow``: reading the workflow file and building the prompt to queue;
- ``client``: the JSON/HTTP client for one ComfyUI server;
- ``refusals``: explaining a refused prompt (missing model files, unknown node types);
- ``follow``: following the job (websocket progress, then ``/history`` and ``/queue``);
- ``downloads``: the files the save nodes wrote, fetched into the output folder (server names
  vetted for every system, never over a file already there);
- ``cli``: the command line.

Standard library only (aiohttp, which ComfyUI's environment has, for the websocket); nothing
here imports ComfyUI or torch.
"""
