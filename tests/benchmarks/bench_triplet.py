"""Time and memory of the LayerFusion triplet against plain SDXL batch-3 sampling and against
LayerDiffuse's sequential SDXL chain, in one process and one run (issue 6).

Run from the repository root::

    python3 tests/benchmarks/bench_triplet.py --tiny            # CPU, tiny random SDXL-shaped UNet
    python3 tests/benchmarks/bench_triplet.py --sdxl            # GPU, full SDXL UNet, fp16, 1024 px, 25 steps

    python3 tests/benchmarks/bench_triplet.py --tiny --layers 1 2 3 4   # K FG layers (bench_layers.py)

Options: ``--repeats N``, ``--steps N``, ``--size PX`` (image side), ``--dtype``, ``--threads N``,
``--no-memory``, ``--profile VARIANT``, ``--fast-weights APPLICATION``, ``--fast-alt``,
``--layers K [K ...]``, ``--layers-options faithful|fast``. Not collected by pytest (no ``test_`` prefix). ComfyUI is
found as the host tests find it (``$COMFYUI_PATH``, the ComfyUI holding this pack, ``~/ComfyUI``)
and imported in library mode with only the modules sampling needs.

Variants, interleaved (the order rotates every repeat), after one untimed warm-up each:

(a) ``plain``: one comfy.sample.sample run of a batch-3 latent whose positive conditioning
    stacks three different prompts (the FG, BG and BLENDED prompts of the triplet), as
    LayerFusion does; same steps, cfg, sampler and scheduler as every other variant.
(b) ``faithful``: sample_triplet with the default options (prior pass every evaluation,
    FG weights on the fly).
(c) ``fast``: previous-evaluation priors with no prior pass at all (``previous_only``: the
    first evaluation records the maps in its main call and does not blend) and the FG
    weights applied as ``--fast-weights`` says (on the fly by default; merged builds its copy
    once and reuses it across runs). ``--fast-alt`` adds a row (c') with the other application, timed in the
    same rotation, to compare the two on one machine and one run.
(d) ``sequential``: LayerDiffuse's SDXL chain as users run it, three batch-1 comfy.sample
    runs: FG with the FG LoRA applied as an ordinary ComfyUI weight patch (LoRAAdapter via
    add_patches on a clone, so ComfyUI patches and unpatches the weights around that run);
    then BLENDED conditioned on FG (8 input channels) and BG conditioned on FG and BLENDED
    (12 input channels). LayerDiffuse's conditional models widen the UNet's first conv and
    concatenate the condition latents to the input; we model that with a clone whose
    ``input_blocks.0.0`` is object-patched by a conv with 8 or 12 input channels (the
    model's own conv class, its weights in the first 4), fed through ComfyUI's
    ``noise_concat`` conditioning key (-> ``c_concat``, concatenated by
    BaseModel._apply_model). Their full-UNet weight diffs are NOT modelled: they cost no
    compute per step, only patching time, so (d) is a lower bound of the real chain's time
    and the ratios against it are conservative.

Times are end to end, as a user waits for them: ComfyUI's model (re)loading and weight
(un)patching around each run, the FG LoRA patch of (d) and the merged-weight copy of (c)
included. Peak memory: on a GPU, the highest torch.cuda peak allocated bytes over each
variant's timed runs (the model is already loaded: the warm-up loads it); on the CPU, the
peak RSS of one child process per variant, forked after the shared setup and running the
variant once (same baseline for all four), or "n/a" with ``--no-memory``.

Random weights are initialised explicitly (ComfyUI's layers start uninitialised):
matrices and kernels N(0, 1/fan_in), norm scales 1, biases N(0, 0.01^2); the FG LoRA has
the real LayerDiffuse key layout (560 projections and rank 256 on SDXL, rank 16 on the tiny
model) with a delta of std 0.1/sqrt(fan_in). On SDXL at 128 px and 25 steps (bf16, CPU) the
largest UNet activation seen was ~360 and the latents stayed finite: fp16 has ample headroom.

The last line printed is ``ratios: faithful <b/a> fast <c/a> faithful_vs_seq <b/d>
fast_vs_seq <c/d> peak_extra_mb <(b)-(a)>``.

``--layers K [K ...]`` replaces the four variants by, per K, plain sampling of K + 2 images in
one batch and a layered run of K FG layers, BG and BLENDED (see bench_layers.py); the table
then has one row per K, the largest K per card is computed from the measured memory (with
``--sdxl``), and the last line is ``ratios: layers1 <layers/plain> ... peak_extra_mb layers1
<MB> ...``.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import logging
import math
import os
import platform
import pstats
import resource
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
for _path in (REPO_ROOT / "tests", REPO_ROOT):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import bench_layers  # noqa: E402
from support import comfy_import, tiny_sdxl  # noqa: E402

from layerfusion_core.architectures.sdxl import SDXL, UNetLayout, layout_from_unet_config  # noqa: E402
from layerfusion_core.comfy_runtime.conditioning import EOS_KEY  # noqa: E402
from layerfusion_core.method.streams import StreamRole  # noqa: E402
from layerfusion_core.models.fg_weights import ForegroundWeights, parse_foreground_weights  # noqa: E402
from layerfusion_core.options import (  # noqa: E402
    LayerFusionOptions,
    PriorOptions,
    PriorTiming,
    WeightApplication,
)

log = logging.getLogger("bench_triplet")

VARIANTS = ("plain", "faithful", "fast", "sequential")
ALT = "fast_alt"
LABELS = {
    "plain": "(a) plain batch-3",
    "faithful": "(b) LayerFusion faithful",
    "fast": "(c) LayerFusion fast",
    "sequential": "(d) LayerDiffuse sequential",
}
FAST = LayerFusionOptions(prior=PriorOptions(timing=PriorTiming.PREVIOUS_ONLY))
RU_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux

# ComfyUI's detected config of SDXL base (comfy/model_detection.py), minus the dtype.
SDXL_UNET_CONFIG: dict[str, Any] = {
    "use_checkpoint": False,
    "image_size": 32,
    "out_channels": 4,
    "use_spatial_transformer": True,
    "legacy": False,
    "num_classes": "sequential",
    "adm_in_channels": 2816,
    "in_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [2, 2, 2],
    "transformer_depth": [0, 0, 2, 2, 10, 10],
    "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10,
    "use_linear_in_transformer": True,
    "context_dim": 2048,
    "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}


@dataclass(frozen=True)
class Mode:
    """One benchmark size."""

    name: str
    size: int  # image side in pixels (latent side = size // 8)
    steps: int
    repeats: int
    dtype: torch.dtype
    context_dim: int
    pooled_dim: int
    lora_rank: int
    sampler: str = "dpmpp_2m"
    scheduler: str = "karras"
    cfg: float = 7.0
    seed: int = 7


TINY = Mode(
    "tiny", 128, 6, 7, torch.float32, tiny_sdxl.TINY_SDXL_CONTEXT_DIM, tiny_sdxl.TINY_SDXL_POOLED_DIM, 16
)
FULL = Mode("sdxl", 1024, 25, 3, torch.float16, 2048, 1280, 256)
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


# ---------------------------------------------------------------------------------------
# ComfyUI, models and inputs
# ---------------------------------------------------------------------------------------


def import_comfy(cpu: bool) -> SimpleNamespace:
    """ComfyUI in library mode: only what sampling needs (no server, nodes or frontend)."""
    located = comfy_import.find_comfyui()
    if located.root is None:
        raise SystemExit(f"bench_triplet: {located.how}")
    root = str(located.root)
    if root in sys.path:
        sys.path.remove(root)
    sys.path.insert(0, root)
    import comfy.options

    comfy.options.enable_args_parsing(False)
    import comfy.cli_args

    if "comfy.model_management" not in sys.modules:
        comfy.cli_args.args.cpu = cpu
    import comfy.model_management
    import comfy.model_patcher
    import comfy.sample
    import comfy.supported_models
    import comfy.weight_adapter
    import latent_preview

    version = "unknown"
    try:
        import comfyui_version

        version = comfyui_version.__version__
    except ImportError:
        pass
    return SimpleNamespace(
        root=located.root,
        version=version,
        mm=comfy.model_management,
        model_patcher=comfy.model_patcher,
        sample=comfy.sample,
        supported_models=comfy.supported_models,
        LoRAAdapter=comfy.weight_adapter.LoRAAdapter,
        latent_preview=latent_preview,
    )


def init_weights_(module: torch.nn.Module, seed: int) -> None:
    """tiny_sdxl.init_weights_'s scheme, drawn on each parameter's own device (fast on a GPU):
    matrices/kernels N(0, 1/fan_in), 1-D weights 1, biases N(0, 0.01^2)."""
    generators: dict[torch.device, torch.Generator] = {}
    with torch.no_grad():
        for name, param in module.named_parameters():
            gen = generators.get(param.device)
            if gen is None:
                gen = generators[param.device] = torch.Generator(param.device).manual_seed(seed)
            if param.ndim >= 2:
                values = torch.randn(param.shape, generator=gen, device=param.device)
                param.copy_(values / math.sqrt(param[0].numel()))
            elif name.endswith("weight"):
                param.fill_(1.0)
            else:
                param.copy_(torch.randn(param.shape, generator=gen, device=param.device) * 0.01)


def build_full_sdxl(comfy: SimpleNamespace, dtype: torch.dtype, seed: int = 0) -> Any:
    """A ModelPatcher around the full SDXL UNet architecture with random weights, built and
    initialised directly on ComfyUI's torch device."""
    config = comfy.supported_models.SDXL(SDXL_UNET_CONFIG)
    if not comfy.supported_models.SDXL.matches(config.unet_config):
        raise RuntimeError("SDXL_UNET_CONFIG no longer matches comfy.supported_models.SDXL")
    config.set_inference_dtype(dtype, None)
    load_device = comfy.mm.get_torch_device()
    model = config.get_model({}, "", device=load_device)
    init_weights_(model, seed)
    model.eval()
    layout = layout_from_unet_config(model.model_config.unet_config, name="SDXL")
    if layout.blocks != SDXL.blocks:
        raise RuntimeError(
            "the built UNet's transformer table differs from layerfusion_core.architectures.sdxl.SDXL"
        )
    return comfy.model_patcher.ModelPatcher(
        model, load_device=load_device, offload_device=comfy.mm.unet_offload_device()
    )


def lora_factors(layout: UNetLayout, rank: int, dtype: torch.dtype, seed: int = 1) -> dict[str, tuple]:
    """Random (up [out, r], down [r, in]) per attention projection, keyed by ldm path; the
    delta up @ down has entries of std 0.1/sqrt(in)."""
    gen = torch.Generator().manual_seed(seed)
    factors = {}
    for proj in layout.projections:
        out_f, in_f = proj.shape
        up = torch.randn(out_f, rank, generator=gen) * (0.1 / math.sqrt(rank))
        down = torch.randn(rank, in_f, generator=gen) / math.sqrt(in_f)
        factors[proj.ldm_path] = (up.to(dtype), down.to(dtype))
    return factors


def foreground_weights(factors: dict[str, tuple], layout: UNetLayout) -> ForegroundWeights:
    """The factors as a LayerDiffuse ``layer_xl_transparent_attn`` file, parsed by our loader."""
    state_dict = {}
    for path, (up, down) in factors.items():
        state_dict[f"diffusion_model.{path}.weight::lora::0"] = up
        state_dict[f"diffusion_model.{path}.weight::lora::1"] = down
    return parse_foreground_weights(state_dict, layout, source="benchmark")


def lora_patched_clone(comfy: SimpleNamespace, model: Any, factors: dict[str, tuple]) -> Any:
    """LayerDiffuse's FG model as ComfyUI applies a LoRA: weight patches on a clone."""
    clone = model.clone()
    patches = {
        f"diffusion_model.{path}.weight": comfy.LoRAAdapter(set(), (up, down, None, None, None, None))
        for path, (up, down) in factors.items()
    }
    applied = clone.add_patches(patches, 1.0)
    if len(applied) != len(patches):
        raise RuntimeError(f"ComfyUI took {len(applied)} of {len(patches)} LoRA patches")
    return clone


def concat_input_clone(model: Any, in_channels: int, seed: int) -> Any:
    """A clone whose first conv reads ``in_channels`` channels (4 latent + condition latents
    arriving as c_concat): the shape of LayerDiffuse's conditional SDXL models."""
    base = model.get_model_object("diffusion_model.input_blocks.0.0")
    conv = type(base)(
        in_channels,
        base.out_channels,
        base.kernel_size,
        stride=base.stride,
        padding=base.padding,
        dtype=base.weight.dtype,
        device=base.weight.device,
    )
    gen = torch.Generator(base.weight.device).manual_seed(seed)
    with torch.no_grad():
        extra = torch.randn(conv.weight.shape, generator=gen, device=conv.weight.device)
        conv.weight.copy_(extra * (0.1 / math.sqrt(conv.weight[0].numel())))
        conv.weight[:, : base.in_channels].copy_(base.weight)
        conv.bias.copy_(base.bias)
    clone = model.clone()
    clone.add_object_patch("diffusion_model.input_blocks.0.0", conv)
    return clone


def make_cond(mode: Mode, seed: int) -> list[list[Any]]:
    """A one-prompt CONDITIONING of the mode's widths, with SDXL's size conditioning set."""
    cond = tiny_sdxl.make_cond(seed, context_dim=mode.context_dim, pooled=mode.pooled_dim)
    cond[0][1].update(width=mode.size, height=mode.size, target_width=mode.size, target_height=mode.size)
    return cond


def stack_prompts(conds: list[list[list[Any]]]) -> list[list[Any]]:
    """Three one-prompt conditionings as one batch-3 conditioning (row i = prompt i)."""
    tensors = torch.cat([c[0][0] for c in conds])
    extras = dict(conds[0][0][1])
    extras["pooled_output"] = torch.cat([c[0][1]["pooled_output"] for c in conds])
    return [[tensors, extras]]


def with_concat(cond: list[list[Any]], latents: torch.Tensor) -> list[list[Any]]:
    return [[cond[0][0], {**cond[0][1], "noise_concat": latents}]]


# ---------------------------------------------------------------------------------------
# The variants
# ---------------------------------------------------------------------------------------


@dataclass
class Setup:
    comfy: SimpleNamespace
    mode: Mode
    model: Any
    factors: dict[str, tuple]
    weights: ForegroundWeights
    fg: list
    bg: list
    blended: list
    negative: list
    fg_model: Any = None
    blended_model: Any = None
    bg_model: Any = None
    fast_weights: WeightApplication = WeightApplication.ON_THE_FLY
    variants: tuple[str, ...] = VARIANTS
    extra_runs: dict[str, Callable[[], list[torch.Tensor]]] = field(default_factory=dict)
    """More variants by name (the ``--layers`` runs)."""

    @property
    def alt_weights(self) -> WeightApplication:
        return next(a for a in WeightApplication if a != self.fast_weights)

    @property
    def latent_side(self) -> int:
        return self.mode.size // 8

    def empty_latent(self, batch: int) -> torch.Tensor:
        return torch.zeros(batch, 4, self.latent_side, self.latent_side)

    def ksample(
        self, model: Any, positive: list, latent: torch.Tensor, negative: list | None = None
    ) -> torch.Tensor:
        """What nodes.common_ksampler does, minus the node: noise from the seed, ComfyUI's
        progress/preview callback, comfy.sample.sample."""
        comfy, mode = self.comfy, self.mode
        negative = self.negative if negative is None else negative
        noise = comfy.sample.prepare_noise(latent, mode.seed)
        callback = comfy.latent_preview.prepare_callback(model, mode.steps)
        return comfy.sample.sample(
            model, noise, mode.steps, mode.cfg, mode.sampler, mode.scheduler, positive, negative,
            latent, callback=callback, disable_pbar=True, seed=mode.seed,
        )  # fmt: skip

    def plain(self) -> list[torch.Tensor]:
        positive = stack_prompts([self.fg, self.bg, self.blended])
        return [self.ksample(self.model, positive, self.empty_latent(3))]

    def triplet(self, options: LayerFusionOptions, application: WeightApplication) -> list[torch.Tensor]:
        from layerfusion_core.comfy_runtime import RunPlan, SamplerSettings, sample_triplet

        mode = self.mode
        fg = [[self.fg[0][0], {**self.fg[0][1], EOS_KEY: 6}]]
        plan = RunPlan.triplet(
            fg, self.bg, self.blended, self.negative, {"samples": self.empty_latent(1)}, options
        )
        settings = SamplerSettings(mode.seed, mode.steps, mode.cfg, mode.sampler, mode.scheduler)
        result = sample_triplet(self.model, self.weights.with_settings(1.0, application), plan, settings)
        return [result.latents[role] for role in StreamRole]

    def sequential(self) -> list[torch.Tensor]:
        latent = self.empty_latent(1)
        fg = self.ksample(self.fg_model, self.fg, latent)
        fg_in = self.model.model.process_latent_in(fg)
        blended = self.ksample(
            self.blended_model, with_concat(self.blended, fg_in), latent, with_concat(self.negative, fg_in)
        )
        both = torch.cat([fg_in, self.model.model.process_latent_in(blended)], dim=1)
        bg = self.ksample(self.bg_model, with_concat(self.bg, both), latent, with_concat(self.negative, both))
        return [fg, blended, bg]

    def run(self, variant: str) -> list[torch.Tensor]:
        if variant in self.extra_runs:
            return self.extra_runs[variant]()
        if variant == "plain":
            return self.plain()
        if variant == "faithful":
            return self.triplet(LayerFusionOptions(), WeightApplication.ON_THE_FLY)
        if variant == "fast":
            return self.triplet(FAST, self.fast_weights)
        if variant == ALT:
            return self.triplet(FAST, self.alt_weights)
        if variant == "sequential":
            return self.sequential()
        raise ValueError(f"variant: expected one of {', '.join(VARIANTS)}, got {variant!r}")


def make_setup(mode: Mode, comfy: SimpleNamespace, sequential: bool = True) -> Setup:
    model = tiny_sdxl.build_tiny_sdxl(0) if mode.name == "tiny" else build_full_sdxl(comfy, mode.dtype)
    layout = layout_from_unet_config(model.model.model_config.unet_config, name=mode.name)
    factors = lora_factors(layout, mode.lora_rank, mode.dtype)
    setup = Setup(
        comfy, mode, model, factors, foreground_weights(factors, layout),
        *(make_cond(mode, seed) for seed in (1, 2, 3, 4)),
    )  # fmt: skip
    if sequential:
        setup.fg_model = lora_patched_clone(comfy, model, factors)
        setup.blended_model = concat_input_clone(model, 8, seed=11)
        setup.bg_model = concat_input_clone(model, 12, seed=12)
    return setup


# ---------------------------------------------------------------------------------------
# Timing, memory, report
# ---------------------------------------------------------------------------------------


def on_gpu(setup: Setup) -> bool:
    return setup.model.load_device.type == "cuda"


def synchronize(setup: Setup) -> None:
    if on_gpu(setup):
        torch.cuda.synchronize(setup.model.load_device)


def check_finite(variant: str, outputs: list[torch.Tensor]) -> None:
    for tensor in outputs:
        if not torch.isfinite(tensor).all():
            raise RuntimeError(
                f"{variant}: the random-weight model produced non-finite latents; times would be distorted"
            )


def timed_run(setup: Setup, variant: str) -> tuple[float, int | None, int | None]:
    """Seconds of one run, and the CUDA peak allocated bytes during it and allocated bytes
    before it (None on the CPU)."""
    synchronize(setup)
    before = None
    if on_gpu(setup):
        torch.cuda.reset_peak_memory_stats(setup.model.load_device)
        before = torch.cuda.memory_allocated(setup.model.load_device)
    start = time.perf_counter()
    setup.run(variant)
    synchronize(setup)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(setup.model.load_device) if on_gpu(setup) else None
    return seconds, peak, before


def measure(
    setup: Setup, repeats: int, added: dict[str, int | None] | None = None
) -> tuple[dict[str, list[float]], dict[str, int | None]]:
    """Warm every variant up once (untimed), then ``repeats`` rounds in rotating order.
    On a GPU, ``added`` gets each variant's highest peak less what was allocated before it."""
    variants = setup.variants
    for variant in variants:
        check_finite(variant, setup.run(variant))
    times: dict[str, list[float]] = {v: [] for v in variants}
    peaks: dict[str, int | None] = dict.fromkeys(variants)
    for r in range(repeats):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for variant in order:
            seconds, peak, before = timed_run(setup, variant)
            times[variant].append(seconds)
            if peak is not None:
                peaks[variant] = max(peaks[variant] or 0, peak)
                if added is not None and before is not None:
                    added[variant] = max(added.get(variant) or 0, peak - before)
    return times, peaks


def forked_peaks(
    setup: Setup, added: dict[str, int | None] | None = None, reset_peak: bool = False
) -> dict[str, int | None]:
    """Peak RSS (bytes) of one forked child per variant, each running the variant once;
    ``added`` gets each child's peak less its RSS before the run.

    The children fork from the same state, so their peaks share one baseline and differ by
    what each variant allocates; Linux starts a child's ru_maxrss afresh at its own RSS.
    ``reset_peak`` (Linux): the child first hands freed heap back (malloc_trim) and resets
    its peak RSS to its RSS (/proc/self/clear_refs), so a parent that has already sampled
    lends it neither a higher peak nor reusable freed memory.
    """
    peaks: dict[str, int | None] = {}
    for variant in setup.variants:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read_fd)
            status = 1
            try:
                if reset_peak:
                    bench_layers.reset_peak_rss()
                start = bench_layers.rss_bytes("VmRSS") if reset_peak else None
                start = start or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RU_MAXRSS_UNIT
                check_finite(variant, setup.run(variant))
                peak = bench_layers.rss_bytes("VmHWM") if reset_peak else None
                peak = peak or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RU_MAXRSS_UNIT
                os.write(write_fd, f"{peak} {start}".encode())
                status = 0
            except BaseException:
                log.exception("memory child for %s failed", variant)
            finally:
                os._exit(status)
        os.close(write_fd)
        with os.fdopen(read_fd) as pipe:
            data = pipe.read()
        _, status = os.waitpid(pid, 0)
        peak, start = (int(v) for v in data.split()) if status == 0 and data else (None, None)
        peaks[variant] = peak
        if added is not None:
            added[variant] = None if peak is None or start is None else peak - start
    return peaks


def profile(setup: Setup, variant: str, top: int = 15) -> None:
    """One run of ``variant`` under cProfile, to stderr: our functions by cumulative time,
    then everything by self time."""
    profiler = cProfile.Profile()
    profiler.enable()
    setup.run(variant)
    profiler.disable()
    stats = pstats.Stats(profiler, stream=sys.stderr)
    stats.sort_stats("cumulative").print_stats("layerfusion_core", top)
    stats.sort_stats("tottime").print_stats(top)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}"


def mib(value: int | None) -> str:
    return "n/a" if value is None else str(round(value / 2**20))


def header_lines(setup: Setup, args: argparse.Namespace) -> list[str]:
    mode = setup.mode
    device = torch.cuda.get_device_name(setup.model.load_device) if on_gpu(setup) else cpu_name()
    memory = "CUDA peak allocated" if on_gpu(setup) else "peak RSS of a forked process per variant"
    return [
        f"bench_triplet {mode.name}: {datetime.date.today().isoformat()}, ComfyUI {setup.comfy.version}, "
        f"torch {torch.__version__}, {device}, {torch.get_num_threads()} threads",
        f"{mode.size}x{mode.size} px, {mode.steps} steps, {mode.sampler}/{mode.scheduler}, cfg {mode.cfg}, "
        f"{str(mode.dtype).removeprefix('torch.')}, FG LoRA rank {mode.lora_rank}, "
        f"{args.repeats} repeats (median), memory = {memory}",
        f"fast = previous_only priors, FG weights {setup.fast_weights.value}",
    ]


def report(
    setup: Setup, args: argparse.Namespace, times: dict[str, list[float]], peaks: dict[str, int | None]
) -> None:
    lines = [
        *header_lines(setup, args),
        "",
        f"| {'variant':<28} | {'median s':>9} | {'vs plain':>8} | {'peak MB':>8} |",
        f"|{'-' * 30}|{'-' * 11}|{'-' * 10}|{'-' * 10}|",
    ]
    medians = {v: statistics.median(times[v]) for v in setup.variants}
    labels = {**LABELS, ALT: f"(c') fast, FG {setup.alt_weights.value}"}
    for v in setup.variants:
        lines.append(
            f"| {labels[v]:<28} | {medians[v]:>9.3f} | {ratio(medians[v], medians['plain']):>8} | "
            f"{mib(peaks[v]):>8} |"
        )
    extra = (
        None if peaks["faithful"] is None or peaks["plain"] is None else peaks["faithful"] - peaks["plain"]
    )
    a, b, c, d = (medians[v] for v in VARIANTS)
    lines += [
        "",
        f"ratios: faithful {ratio(b, a)} fast {ratio(c, a)} faithful_vs_seq {ratio(b, d)} "
        f"fast_vs_seq {ratio(c, d)} peak_extra_mb {mib(extra)}"
        + (f" fast_alt {ratio(medians[ALT], a)}" if ALT in medians else ""),
    ]
    print("\n".join(lines), flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--tiny", dest="mode", action="store_const", const="tiny", help="tiny model, CPU")
    which.add_argument("--sdxl", dest="mode", action="store_const", const="sdxl", help="full SDXL UNet")
    parser.add_argument("--repeats", type=int, help="timed rounds (default: tiny 7, sdxl 3)")
    parser.add_argument("--steps", type=int, help="sampling steps (default: tiny 6, sdxl 25)")
    parser.add_argument("--size", type=int, help="image side in px, a multiple of 64 (tiny 128, sdxl 1024)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="weights (tiny float32, sdxl float16)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: tiny 1, sdxl torch's own)")
    parser.add_argument("--no-memory", action="store_true", help="CPU: skip the per-variant child processes")
    parser.add_argument(
        "--profile", choices=(*VARIANTS, ALT), help="after timing, cProfile one run (to stderr)"
    )
    parser.add_argument(
        "--fast-weights",
        choices=[a.value for a in WeightApplication],
        default=WeightApplication.ON_THE_FLY.value,
        help="FG weight application of the fast variant (default on_the_fly, which measured faster "
        "than merged on the real architecture)",
    )
    parser.add_argument("--fast-alt", action="store_true", help="add (c'): fast with the other application")
    bench_layers.add_arguments(parser)
    args = parser.parse_args(argv)
    base = TINY if args.mode == "tiny" else FULL
    args.repeats = args.repeats or base.repeats
    args.steps = args.steps or base.steps
    args.size = args.size or base.size
    args.dtype = args.dtype or str(base.dtype).removeprefix("torch.")
    if args.size % 64 or args.size <= 0:
        parser.error(f"--size: expected a positive multiple of 64, got {args.size}")
    if args.repeats < 1 or args.steps < 1:
        parser.error("--repeats and --steps: expected >= 1")
    bench_layers.check_arguments(parser, args)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if args.threads or args.mode == "tiny":
        # One thread for the tiny model: multi-threaded tiny ops are slower and noisier.
        torch.set_num_threads(args.threads or 1)
    base = TINY if args.mode == "tiny" else FULL
    mode = Mode(
        base.name, args.size, args.steps, args.repeats, DTYPES[args.dtype],
        base.context_dim, base.pooled_dim, base.lora_rank,
    )  # fmt: skip
    cpu = args.mode == "tiny" or not torch.cuda.is_available()
    if cpu:
        torch.set_flush_denormal(True)
    comfy = import_comfy(cpu)
    setup = make_setup(mode, comfy, sequential=args.layers is None)
    setup.fast_weights = WeightApplication(args.fast_weights)
    setup.variants = (*VARIANTS, ALT) if args.fast_alt else VARIANTS
    runs = None
    if args.layers is not None:
        fgs = [make_cond(mode, 20 + k) for k in range(max(args.layers))]
        runs = bench_layers.LayerRuns.install(setup, args, fgs, stack_prompts, FAST)
    peaks: dict[str, int | None] = dict.fromkeys(setup.variants)
    added: dict[str, int | None] = dict.fromkeys(setup.variants)
    forks = not on_gpu(setup) and not args.no_memory
    if forks and not hasattr(os, "fork"):
        log.warning("no os.fork on this platform: peak memory is n/a")
        forks = False
    if forks and runs is None:  # the triplet's children fork before anything was sampled
        peaks = forked_peaks(setup, added)
    times, cuda_peaks = measure(setup, args.repeats, added)
    if forks and runs is not None:  # the layers' children fork warm: first-run costs paid
        peaks = forked_peaks(setup, added, reset_peak=True)
    if on_gpu(setup):
        peaks = cuda_peaks
    if args.profile:
        profile(setup, args.profile)
    if runs is None:
        report(setup, args, times, peaks)
    else:
        medians = {v: statistics.median(times[v]) for v in setup.variants}
        lines = [*header_lines(setup, args)[:2], f"layers: {args.layers_options} options", ""]
        print("\n".join(lines + bench_layers.report_lines(runs, medians, peaks, added, mib)), flush=True)


if __name__ == "__main__":
    main()
