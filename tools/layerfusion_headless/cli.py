"""The command line: arguments, the run from workflow file to downloaded layers, exit codes."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .client import DEFAULT_SERVER, ComfyClient
from .downloads import download_saved, saved_files
from .errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE, RunError, WorkflowError
from .follow import Reporter, history_outcome, queue_and_follow, wait_for_history
from .overrides import parse_set_override
from .refusals import FolderFinder, _load_model_files, describe_refusal
from .ui_to_api import is_ui_workflow
from .workflow import build_prompt, load_json_file, load_workflow

HISTORY_GRACE_SECONDS = 30.0


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="layerfusion_run.py",
        description="Queue a ComfyUI workflow on a running ComfyUI, follow it and download what its "
        "save nodes write. The workflow's saved seed is used unless --seed is given.",
    )
    parser.add_argument(
        "--server", default=DEFAULT_SERVER, help=f"ComfyUI address (default {DEFAULT_SERVER})"
    )
    parser.add_argument(
        "--workflow", required=True, help="workflow JSON (UI format as ComfyUI saves it, or API)"
    )
    parser.add_argument("--fg", help="foreground prompt (LayerFusionTextEncode fg_text)")
    parser.add_argument("--bg", help="background prompt (LayerFusionTextEncode bg_text)")
    parser.add_argument("--blended", help="blended-image prompt (LayerFusionTextEncode blended_text)")
    parser.add_argument("--seed", type=int, help="noise seed (the LayerFusion sampler / KSampler)")
    parser.add_argument("--steps", type=int, help="sampling steps (the LayerFusion sampler / KSampler)")
    parser.add_argument("--width", type=int, help="image width (EmptyLatentImage)")
    parser.add_argument("--height", type=int, help="image height (EmptyLatentImage)")
    parser.add_argument("--batch-size", type=int, help="images per run (EmptyLatentImage)")
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="NODE.INPUT=VALUE",
        help="set any input; NODE is a node id, title or class type; VALUE is parsed as JSON when it "
        "can be (repeatable), e.g. --set CheckpointLoaderSimple.ckpt_name=my_sdxl.safetensors",
    )
    parser.add_argument("--out", default="layerfusion_output", help="folder for the saved files")
    parser.add_argument("--include-previews", action="store_true", help="also download preview (temp) images")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait for the job")
    parser.add_argument("--print-api", action="store_true", help="print the API-format prompt and exit")
    parser.add_argument("--object-info", help="read /object_info from this JSON file instead of the server")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return parser


def named_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "fg": args.fg,
        "bg": args.bg,
        "blended": args.blended,
        "seed": args.seed,
        "steps": args.steps,
        "width": args.width,
        "height": args.height,
        "batch_size": args.batch_size,
    }


def queue_prompt(
    client: ComfyClient,
    prompt: Mapping[str, Any],
    client_id: str,
    object_info: Mapping[str, Any],
    reporter: Reporter,
    refused: list[str],
    workflow: Mapping[str, Any] | None = None,
) -> str:
    """POST the prompt; raise RunError when the server refuses all of it. Problems with parts
    of it (outputs that will not run) are printed and appended to ``refused``."""
    prompt_id = str(uuid.uuid4())
    payload: dict[str, Any] = {"prompt": prompt, "client_id": client_id, "prompt_id": prompt_id}
    if workflow is not None:  # as the browser does: saved PNGs then carry the graph
        payload["extra_data"] = {"extra_pnginfo": {"workflow": workflow}}
    status, answer = client.post_json("/prompt", payload)
    finder = FolderFinder(client, _load_model_files())
    if status != 200:
        lines = describe_refusal(answer if isinstance(answer, Mapping) else {}, object_info, finder)
        raise RunError("the server refused the workflow:\n  " + "\n  ".join(lines))
    if answer.get("node_errors"):
        for line in describe_refusal({"node_errors": answer["node_errors"]}, object_info, finder):
            print(f"error: part of the workflow will not run: {line}", file=sys.stderr, flush=True)
            refused.append(line)
    reporter.line(f"queued prompt {answer.get('prompt_id', prompt_id)} on {client.server}")
    return str(answer.get("prompt_id", prompt_id))


def print_note(text: str) -> None:
    """A line on stderr that --quiet keeps (e.g. a download saved under another name)."""
    print(f"note: {text}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    client = ComfyClient(args.server)
    workflow = load_workflow(args.workflow)
    try:
        sets = [parse_set_override(text) for text in args.sets]
    except WorkflowError as exc:
        raise RunError(str(exc), EXIT_USAGE) from exc
    object_info = load_json_file(args.object_info) if args.object_info else client.get_json("/object_info")
    prompt, notes = build_prompt(workflow, object_info, named_overrides(args), sets, client.server)
    reporter = Reporter(prompt, args.quiet)
    for note in notes:
        reporter.line(note)
    if args.print_api:
        json.dump(prompt, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK

    client_id = uuid.uuid4().hex
    started = time.monotonic()

    refused: list[str] = []

    def queue() -> str:
        ui_workflow = workflow if is_ui_workflow(workflow) else None
        return queue_prompt(client, prompt, client_id, object_info, reporter, refused, ui_workflow)

    prompt_id, outcome = queue_and_follow(client, client_id, queue, reporter, args.timeout)
    if outcome is not None and not outcome.ok:
        raise RunError(outcome.message)
    remaining = max(args.timeout - (time.monotonic() - started), 0.0)
    entry = wait_for_history(client, prompt_id, remaining + (HISTORY_GRACE_SECONDS if outcome else 0.0))
    outcome = history_outcome(entry)
    if not outcome.ok:
        raise RunError(outcome.message)

    types = ("output", "temp") if args.include_previews else ("output",)
    files = saved_files(entry, types)
    if not files:
        why = " (part of it was refused, see above)" if refused else " (does the workflow have a save node?)"
        raise RunError(f"the job finished but no node saved a file{why}")
    out_dir = Path(args.out)
    for path in download_saved(client, files, out_dir, print_note):
        print(os.fspath(path), flush=True)
    reporter.line(f"done in {time.monotonic() - started:.1f} s: {len(files)} file(s) in {out_dir}")
    if refused:
        raise RunError(f"{len(refused)} problem(s) kept part of the workflow from running (see above)")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return run(args)
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: stopped (the job may still run on the server)", file=sys.stderr)
        return EXIT_FAILED
    except TimeoutError as exc:
        print(f"error: the server did not answer in time ({exc})", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # anything unforeseen: still one line, never a traceback
        print(f"error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
