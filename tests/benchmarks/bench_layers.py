"""The ``--layers K [K ...]`` variants of bench_triplet.py (issue 12): a layered run with K FG
layers against plain sampling of K + 2 images in one batch, and the largest K per card size
computed from the measured memory.

Per K, two variants join the interleaved rotation:

``plain_K``: one comfy.sample.sample run of a batch of K + 2 latents whose positive
    conditioning stacks K + 2 different prompts (the K layer prompts, BG, BLENDED): as many
    rows per UNet call as the layered run's main call (2 (K + 2) with CFG).
``layers_K``: sample_layers with StreamSet(foregrounds=K), the same prompts, one image
    (N = 1), the options of ``--layers-options`` (faithful: a prior pass of K rows every
    evaluation, FG weights on the fly; fast: previous-evaluation priors, FG weights as
    ``--fast-weights`` says).

Memory is what each variant adds to the process it runs in: on the CPU, a forked child's
peak RSS minus its RSS at the fork; on a GPU, the CUDA peak allocated minus what was
allocated before the run. The added memory of the layered runs is fitted as
``a + b K`` (least squares over the K measured), scaled by (1024 / size)^2 to 1024 px
(activations grow with the latent's area) and added to the fp16 weights of the SDXL UNet
and the FG LoRA to give the largest K per card.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from layerfusion_core.architectures.sdxl import SDXL
from layerfusion_core.comfy_runtime.conditioning import EOS_KEY
from layerfusion_core.method.streams import StreamRole, StreamSet
from layerfusion_core.options import LayerFusionOptions, WeightApplication

CARDS_GB = (8, 12, 16, 24)
SDXL_UNET_PARAMS = 2_567_463_684  # comfy.supported_models.SDXL's UNet, counted on the built model
FULL_SIZE = 1024
RESERVE_GB = 1.0  # CUDA context, cuBLAS workspace and allocator slack kept free on every card
FG_LORA_RANK = 256  # LayerDiffuse's layer_xl_transparent_attn
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def plain_name(k: int) -> str:
    return f"plain_{k}"


def layers_name(k: int) -> str:
    return f"layers_{k}"


def main_rows(k: int, images: int = 1) -> int:
    """Rows of the layered run's main UNet call with CFG: 2 (K + 2) N."""
    return 2 * (k + 2) * images


def prior_rows(k: int, images: int = 1) -> int:
    """Rows of its prior pass (the K FG streams' conditional rows): K N."""
    return k * images


@dataclass
class LayerRuns:
    """The runs of one ``--layers`` benchmark, keyed by variant name."""

    setup: Any  # bench_triplet.Setup
    ks: tuple[int, ...]
    fgs: list  # one one-prompt conditioning per FG layer, the deepest K first
    stack: Callable[[list], list]  # one-prompt conditionings -> one batch conditioning
    options: LayerFusionOptions
    application: WeightApplication

    @classmethod
    def install(
        cls, setup: Any, args: argparse.Namespace, fgs: list, stack: Callable, fast: LayerFusionOptions
    ) -> LayerRuns:
        """The runs of ``--layers``, made the setup's variants."""
        faithful = args.layers_options == "faithful"
        runs = cls(
            setup, args.layers, fgs, stack, LayerFusionOptions() if faithful else fast,
            WeightApplication.ON_THE_FLY if faithful else setup.fast_weights,
        )  # fmt: skip
        setup.extra_runs = runs.runs()
        setup.variants = runs.variants
        return runs

    @property
    def variants(self) -> tuple[str, ...]:
        return tuple(name for k in self.ks for name in (plain_name(k), layers_name(k)))

    def runs(self) -> dict[str, Callable[[], list[torch.Tensor]]]:
        out: dict[str, Callable[[], list[torch.Tensor]]] = {}
        for k in self.ks:
            out[plain_name(k)] = lambda k=k: self.plain(k)
            out[layers_name(k)] = lambda k=k: self.layers(k)
        return out

    def plain(self, k: int) -> list[torch.Tensor]:
        setup = self.setup
        positive = self.stack([*self.fgs[:k], setup.bg, setup.blended])
        return [setup.ksample(setup.model, positive, setup.empty_latent(k + 2))]

    def layers(self, k: int) -> list[torch.Tensor]:
        from layerfusion_core.comfy_runtime import RunPlan, SamplerSettings, sample_layers

        setup, mode = self.setup, self.setup.mode
        stream_set = StreamSet(foregrounds=k)
        prompts = {}
        for stream in stream_set.streams:
            if stream.role == StreamRole.FG:
                cond = self.fgs[stream.index]
                prompts[stream] = [[cond[0][0], {**cond[0][1], EOS_KEY: 6}]]
            else:
                prompts[stream] = setup.bg if stream.role == StreamRole.BG else setup.blended
        plan = RunPlan(stream_set, prompts, setup.negative, {"samples": setup.empty_latent(1)}, self.options)
        settings = SamplerSettings(mode.seed, mode.steps, mode.cfg, mode.sampler, mode.scheduler)
        weights = setup.weights.with_settings(1.0, self.application)
        result = sample_layers(setup.model, weights, plan, settings)
        return list(result.latents.values())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--layers",
        type=int,
        nargs="+",
        metavar="K",
        help="instead of (a)-(d): per K, plain batch-(K+2) sampling against K FG layers, BG and BLENDED",
    )
    parser.add_argument(
        "--layers-options",
        choices=("faithful", "fast"),
        default="faithful",
        help="options of the --layers runs (default faithful; fast uses --fast-weights)",
    )


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.layers is None:
        return
    if any(k < 1 for k in args.layers):
        parser.error(f"--layers: expected K >= 1, got {' '.join(map(str, args.layers))}")
    if args.profile or args.fast_alt:
        parser.error("--layers: --profile and --fast-alt are for the triplet variants")
    args.layers = tuple(sorted(set(args.layers)))


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """(a, b) of the least-squares line y = a + b x; b = 0 with a single point."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    var = sum((x - mean_x) ** 2 for x in xs)
    b = 0.0 if var == 0 else sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var
    return mean_y - b * mean_x, b


def fg_lora_bytes(rank: int = FG_LORA_RANK, itemsize: int = 2) -> int:
    """The FG LoRA's factors on SDXL (up [out, r] and down [r, in] per projection)."""
    return sum(rank * (out_f + in_f) for out_f, in_f in (p.shape for p in SDXL.projections)) * itemsize


def largest_k(card_gb: float, need: Callable[[int], float], max_k: int = 999) -> int:
    """The largest K (up to ``max_k``) whose ``need(K)`` bytes fit the card less RESERVE_GB;
    0 if K = 1 does not."""
    budget = (card_gb - RESERVE_GB) * 2**30
    best = 0
    for k in range(1, max_k + 1):
        if need(k) > budget:
            break
        best = k
    return best


def report_lines(
    runs: LayerRuns,
    medians: dict[str, float],
    peaks: dict[str, int | None],
    added: dict[str, int | None],
    mib: Callable[[int | None], str],
) -> list[str]:
    """The K-layers table, the fits of the added memory and the computed largest K per card;
    the last line is ``ratios: layers1 <layers_1/plain_1> ... peak_extra_mb layers1 <MB> ...``."""
    lines = [
        f"| {'K':>2} | {'rows':>5} | {'plain K+2 s':>11} | {'layers s':>9} | {'ratio':>6} | "
        f"{'plain MB':>9} | {'layers MB':>9} | {'plain +MB':>9} | {'layers +MB':>10} |",
        f"|{'-' * 4}|{'-' * 7}|{'-' * 13}|{'-' * 11}|{'-' * 8}|{'-' * 11}|{'-' * 11}|{'-' * 11}|{'-' * 12}|",
    ]
    ratios, extras = [], []
    for k in runs.ks:
        plain, layered = plain_name(k), layers_name(k)
        ratio = medians[layered] / medians[plain]
        extra = None if peaks[layered] is None or peaks[plain] is None else peaks[layered] - peaks[plain]
        rows = f"{main_rows(k)}+{prior_rows(k)}"
        lines.append(
            f"| {k:>2} | {rows:>5} | {medians[plain]:>11.3f} | {medians[layered]:>9.3f} | {ratio:>6.2f} | "
            f"{mib(peaks[plain]):>9} | {mib(peaks[layered]):>9} | {mib(added[plain]):>9} | "
            f"{mib(added[layered]):>10} |"
        )
        ratios.append(f"layers{k} {ratio:.2f}")
        extras.append(f"layers{k} {mib(extra)}")
    lines.append(
        "rows: main call 2 (K + 2) (CFG, N = 1) + prior pass K; plain runs the same main rows. "
        "+MB: added by the run (peak less the memory before it)"
    )
    lines += computed_lines(runs, added)
    lines += ["", "ratios: " + " ".join(ratios) + " peak_extra_mb " + " ".join(extras)]
    return lines


def memory_fits(runs: LayerRuns, added: dict[str, int | None]) -> tuple[float, float, float] | None:
    """(bytes a plain run adds at no rows, bytes per main-call row of plain sampling, bytes a
    layered run adds per FG layer beyond its two main-call rows, at least 0): least-squares
    lines of the added memory over rows and over K; None when fewer than two K were measured
    or memory is n/a."""
    if len(runs.ks) < 2:
        return None
    plain = [added[plain_name(k)] for k in runs.ks]
    layered = [added[layers_name(k)] for k in runs.ks]
    if any(v is None for v in (*plain, *layered)):
        return None
    overhead, per_row = linear_fit([main_rows(k) for k in runs.ks], [float(v) for v in plain])
    per_layer = linear_fit(list(runs.ks), [float(v) for v in layered])[1]
    return max(overhead, 0.0), per_row, max(per_layer - 2 * per_row, 0.0)


def computed_lines(runs: LayerRuns, added: dict[str, int | None]) -> list[str]:
    """Largest K per card at 1024 px for N = 1 and 2 images, computed from the measured lines:
    the fp16 UNet and FG LoRA, the run's overhead at no rows as measured, and the rows of the
    main UNet call at the per-row memory (2 (K + 2) N with cond and uncond in one call,
    (K + 2) N when ComfyUI splits them) plus the per-layer extra, both scaled by the area to
    1024 px. The prior pass (K N rows) is a call of its own, smaller than the main one."""
    fits = memory_fits(runs, added)
    if fits is None:
        return []
    overhead, per_row, extra = fits
    size = runs.setup.mode.size
    lines = [
        "",
        f"measured at {size} px: {overhead / 2**20:.0f} MB at no rows + {per_row / 2**20:.2f} MB per "
        f"main-call row (plain); layered: {extra / 2**20:.2f} MB per FG layer beyond its rows",
    ]
    if runs.setup.mode.name != "sdxl":
        lines.append("largest K per card: not computed (needs the SDXL UNet's activations: run with --sdxl)")
        return lines
    scale = (FULL_SIZE / size) ** 2
    weights = SDXL_UNET_PARAMS * 2 + fg_lora_bytes()
    lines.append(
        f"computed for {FULL_SIZE} px: {weights / 2**30:.2f} GB fp16 UNet and FG LoRA + overhead + "
        f"x{scale:g} (area) x (rows x per-row + N K x per-layer), {RESERVE_GB:g} GB kept free"
    )
    for images in (1, 2):
        for split, label in ((1, "cond+uncond in one call"), (2, "cond, uncond split")):

            def need(k: int, n: int = images, s: int = split) -> float:
                rows = main_rows(k, n) // s
                return weights + overhead + scale * (rows * per_row + n * k * extra)

            cells = ", ".join(f"{gb} GB: {largest_k(gb, need)}" for gb in CARDS_GB)
            lines.append(f"largest K, N = {images}, {label}: {cells}")
    return lines


def rss_bytes(field_name: str) -> int | None:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process from /proc/self/status; None elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def reset_peak_rss() -> None:
    """For a forked memory child (Linux with glibc; a no-op elsewhere): from now on every block
    over 128 KiB gets its own mapping, returned at free (no dynamic threshold, no kept top),
    so the RSS follows the tensors alive rather than the heap's history; freed heap goes back
    to the system, and the peak RSS restarts at the current RSS."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
        libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)
        libc.malloc_trim(0)
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
