"""What a re-harmonise and a decomposition cost against the layered run they start from, in one
process and one run (issues 13 and 14).

Run from the repository root::

    python3 tests/benchmarks/bench_edits.py --tiny            # CPU, tiny random SDXL-shaped UNet
    python3 tests/benchmarks/bench_edits.py --sdxl            # GPU, full SDXL UNet, fp16, 1024 px, 25 steps

Options: ``--layers K`` (FG layers, default 2), ``--p-start P`` (the re-harmonise's start,
default 0.40; its end is P + 0.20), ``--repeats N``, ``--steps N``, ``--size PX``, ``--dtype``,
``--threads N``. Models, prompts and settings are bench_triplet.py's (same ``Mode``s).

Variants, interleaved (the order rotates every repeat), after one untimed warm-up each:

``layers``: sample_layered with K FG layers, BG and BLENDED, the default (faithful) options:
    the run a re-harmonise starts from. Its blended prompt is one 77-token prompt, as the
    decomposition's image prompt (the default, the layers' prompts joined, would make every
    row's cross-attention longer).
``reharmonize``: the back-most layer moved by one latent cell, re-harmonised with the
    window (P, P + 0.2): only BLENDED is sampled, from the first step at or after P.
``decompose``: the same chain decomposed from an image: the inversion of one row (cfg 1,
    euler, every step) and the layered run with BLENDED pinned.

The VAE is a free stand-in (a nearest-neighbour resize between latent and pixels), so the
figures are sampling alone; a real VAE adds the same decode to the layered run's own
Decode Layers. The expected re-harmonise ratio is (1 - P) / (K + 2): the part of the
schedule it samples, and one row of the K + 2 every step of the first run has. The last line
printed is ``ratios: reharmonize <measured> expected <(1 - P)/(K + 2)> decompose <measured>``.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_triplet as bench

from layerfusion_core.comfy_runtime import SamplerSettings
from layerfusion_core.comfy_runtime.conditioning import EOS_KEY
from layerfusion_core.layers.placement import Placement
from layerfusion_core.layers.prompts import LayerChain, LayeredPrompts, LayerPrompt
from layerfusion_core.options import LayerFusionOptions, ReharmonizeOptions

VARIANTS = ("layers", "reharmonize", "decompose")
LABELS = {
    "layers": "layered run (K layers, BG, BLENDED)",
    "reharmonize": "re-harmonise (BLENDED only)",
    "decompose": "decompose (inversion + run)",
}


class ResizeVAE:
    """A free VAE stand-in: decode resizes the latent's first three channels to pixels,
    encode averages pixels back to latent cells (fourth channel zero)."""

    def decode(self, samples: torch.Tensor) -> torch.Tensor:
        rgb = samples[:, :3].float().sigmoid()
        return F.interpolate(rgb, scale_factor=8, mode="nearest").movedim(1, -1)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        cells = F.avg_pool2d(pixels.movedim(-1, 1).float(), 8)
        return torch.cat((cells, torch.zeros_like(cells[:, :1])), dim=1) * 4 - 2


class EditRuns:
    def __init__(self, setup: bench.Setup, layers: int, p_start: float) -> None:
        mode = setup.mode
        self.setup = setup
        self.vae = ResizeVAE()
        self.settings = SamplerSettings(mode.seed, mode.steps, mode.cfg, mode.sampler, mode.scheduler)
        chain = LayerChain()
        for k in range(layers):
            cond = bench.make_cond(mode, 20 + k)
            cond[0][1][EOS_KEY] = 6
            chain = chain.add(LayerPrompt(cond, f"layer {k}", f"layer{k}"))
        self.chain = chain
        self.window = ReharmonizeOptions(p_start, min(1.0, p_start + 0.2))
        side = setup.latent_side * 8
        self.image = torch.rand(1, side, side, 3, generator=torch.Generator().manual_seed(5))
        self.decoded = None

    def layers(self):
        from layerfusion_core.comfy_runtime.layered import sample_layered

        setup = self.setup
        bundle = sample_layered(
            setup.model, setup.weights, LayeredPrompts(self.chain, setup.bg, setup.blended, setup.negative),
            {"samples": setup.empty_latent(1)}, self.settings, LayerFusionOptions(),
        )  # fmt: skip
        if self.decoded is None:
            images = {key: self.vae.decode(bundle.latents[key]) for key in bundle.keys}
            for key in bundle.order:
                alpha = torch.zeros_like(images[key][..., :1])
                alpha[:, : alpha.shape[1] // 2] = 1.0
                images[key] = torch.cat((images[key], alpha), dim=-1)
            self.decoded = bundle.with_images(images)
        return list(bundle.latents.values())

    def reharmonize(self):
        from layerfusion_core.comfy_runtime.reharmonizing import reharmonize

        side = self.setup.latent_side * 8
        move = {self.decoded.order[0]: [Placement(8, 0, side, side)]}
        bundle = reharmonize(self.setup.model, self.vae, self.decoded, move, self.window, 0)
        return [bundle.latents["blended"]]

    def decompose(self):
        from layerfusion_core.comfy_runtime.decomposing import decompose

        setup = self.setup
        bundle = decompose(
            setup.model, setup.weights, self.vae, self.image,
            LayeredPrompts(self.chain, setup.bg, setup.blended, setup.negative), self.settings, LayerFusionOptions(),
        )  # fmt: skip
        return list(bundle.latents.values())


def measure(runs: EditRuns, repeats: int) -> dict[str, list[float]]:
    with torch.inference_mode():
        for variant in VARIANTS:  # warm-up (the layered run first: it makes the bundle)
            bench.check_finite(variant, getattr(runs, variant)())
        times: dict[str, list[float]] = {v: [] for v in VARIANTS}
        for repeat in range(repeats):
            order = VARIANTS[repeat % 3 :] + VARIANTS[: repeat % 3]
            for variant in order:
                bench.synchronize(runs.setup)
                start = time.perf_counter()
                getattr(runs, variant)()
                bench.synchronize(runs.setup)
                times[variant].append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--tiny", dest="mode", action="store_const", const="tiny", help="tiny model, CPU")
    which.add_argument("--sdxl", dest="mode", action="store_const", const="sdxl", help="full SDXL UNet")
    parser.add_argument("--layers", type=int, default=2, help="FG layers K (1..4, default 2)")
    parser.add_argument(
        "--p-start", type=float, default=0.4, help="re-harmonise start percent (default 0.40)"
    )
    parser.add_argument("--repeats", type=int, help="timed rounds (default: tiny 7, sdxl 3)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: tiny 6, sdxl 25)")
    parser.add_argument("--size", type=int, help="image side in px, a multiple of 64 (tiny 128, sdxl 1024)")
    parser.add_argument("--dtype", choices=sorted(bench.DTYPES), help="weights (tiny float32, sdxl float16)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: tiny 1, sdxl torch's own)")
    args = parser.parse_args(argv)
    if not 1 <= args.layers <= 4 or not 0 <= args.p_start < 1:
        parser.error("--layers: 1..4; --p-start: 0 <= P < 1")
    base = bench.TINY if args.mode == "tiny" else bench.FULL
    repeats, steps, size = args.repeats or base.repeats, args.steps or base.steps, args.size or base.size
    if size % 64 or repeats < 1 or steps < 1:
        parser.error("--size: a positive multiple of 64; --repeats, --steps: >= 1")
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if args.threads or args.mode == "tiny":
        torch.set_num_threads(args.threads or 1)
    dtype = bench.DTYPES[args.dtype] if args.dtype else base.dtype
    mode = bench.Mode(
        base.name, size, steps, repeats, dtype, base.context_dim, base.pooled_dim, base.lora_rank
    )
    cpu = args.mode == "tiny" or not torch.cuda.is_available()
    if cpu:
        torch.set_flush_denormal(True)
    comfy = bench.import_comfy(cpu)
    setup = bench.make_setup(mode, comfy, sequential=False)
    runs = EditRuns(setup, args.layers, args.p_start)
    medians = {v: statistics.median(t) for v, t in measure(runs, repeats).items()}
    device = torch.cuda.get_device_name(setup.model.load_device) if bench.on_gpu(setup) else bench.cpu_name()
    expected = (1 - args.p_start) / (args.layers + 2)
    lines = [
        f"bench_edits {mode.name}: {datetime.date.today().isoformat()}, ComfyUI {comfy.version}, "
        f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads",
        f"{size}x{size} px, {steps} steps, {mode.sampler}/{mode.scheduler}, cfg {mode.cfg}, "
        f"{str(dtype).removeprefix('torch.')}, K = {args.layers}, re-harmonise window "
        f"{runs.window.start_percent:.2f}-{runs.window.end_percent:.2f}, {repeats} repeats (median)",
        "",
        f"| {'variant':<38} | {'median s':>9} | {'vs layered run':>14} |",
        f"|{'-' * 40}|{'-' * 11}|{'-' * 16}|",
    ]
    for variant in VARIANTS:
        lines.append(
            f"| {LABELS[variant]:<38} | {medians[variant]:>9.3f} | "
            f"{bench.ratio(medians[variant], medians['layers']):>14} |"
        )
    lines += [
        "",
        f"ratios: reharmonize {bench.ratio(medians['reharmonize'], medians['layers'])} expected "
        f"{expected:.2f} decompose {bench.ratio(medians['decompose'], medians['layers'])}",
    ]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
