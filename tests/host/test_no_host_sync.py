"""Nothing crosses from the device to the host inside a model evaluation: while ComfyUI runs the
UNet of a LayerFusion run, no code of the pack reads a tensor's values (``.item()``,
``.tolist()``, ``.cpu()``, ``.numpy()``, ``bool``/``int``/``float`` of a tensor, so no Python
branch on one) or converts to float64 (Apple's MPS has none). On a GPU each of these stalls
the device; here, on the CPU, a torch function mode sees every call and the stack says whose
it is. Runs: a triplet, two layers with a box (the couple and the paste), and a decomposition
with a mask (given region masks), each with FG weights on the fly."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from support.fg_tiny import tiny_fg_weights
from support.tiny_sdxl import make_cond, make_latent
from support.tiny_stand_ins import tiny_vae
from torch.overrides import TorchFunctionMode

from layerfusion_core.comfy_runtime import RunPlan, SamplerSettings, sample_triplet
from layerfusion_core.comfy_runtime.decomposing import decompose
from layerfusion_core.comfy_runtime.layered import sample_layered
from layerfusion_core.layers.prompts import Box, LayerChain, LayeredPrompts, LayerPrompt
from layerfusion_core.options import LayerFusionOptions, PriorOptions, PriorOrientation, PriorTiming

PACK_CORE = str(Path(__file__).resolve().parents[2] / "layerfusion_core")
READS = {"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "double"}
SETTINGS = SamplerSettings(7, 2, 5.0, "euler", "normal")
SIZE = 64


def _is_float64(args, kwargs) -> bool:
    return any(a is torch.float64 for a in (*args[1:], *(kwargs or {}).values()))


class HostReads(TorchFunctionMode):
    """Records (function, pack file:line) for every value read or float64 conversion whose
    caller is the pack's engine."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in READS or (name == "to" and _is_float64(args, kwargs)):
            caller = self._pack_caller()
            if caller is not None:
                self.found.append((name, caller))
        return func(*args, **(kwargs or {}))

    @staticmethod
    def _pack_caller() -> str | None:
        frame = sys._getframe(2)
        while frame is not None and "/torch/" in frame.f_code.co_filename:
            frame = frame.f_back
        if frame is None or not frame.f_code.co_filename.startswith(PACK_CORE):
            return None
        return f"{Path(frame.f_code.co_filename).relative_to(PACK_CORE)}:{frame.f_lineno}"


@pytest.fixture
def watched(tiny_sdxl):
    """The tiny model with a probe around every UNet call (outside the pack's own wrapper),
    and the probe's record."""
    import comfy.patcher_extension

    reads = HostReads()

    def probe(executor, *args, **kwargs):
        with reads:
            return executor(*args, **kwargs)

    model = tiny_sdxl.clone()
    model.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test_host_reads", probe)
    return model, reads


def layer(seed: int, name: str, **kw) -> LayerPrompt:
    cond = make_cond(seed)
    cond[0][1]["layerfusion_eos_index"] = 6
    return LayerPrompt(cond, f"prompt {seed}", name, **kw)


@pytest.mark.parametrize(
    "prior",
    [
        PriorOptions(),
        PriorOptions(orientation=PriorOrientation.AUTO, auto_vote_evaluations=2),
        PriorOptions(orientation=PriorOrientation.AUTO, timing=PriorTiming.PREVIOUS),
    ],
    ids=["prior_pass", "auto_vote", "auto_previous"],
)
def test_a_triplet_run_reads_nothing_back(watched, prior):
    """The orientation vote is counted between model calls (after a prior pass, or when the
    next evaluation opens), not inside them."""
    model, reads = watched
    fg, bg, bl, neg = make_cond(1), make_cond(2), make_cond(3), make_cond(4)
    fg[0][1]["layerfusion_eos_index"] = 6
    plan = RunPlan.triplet(fg, bg, bl, neg, make_latent(1, 8, 8), LayerFusionOptions(prior=prior))
    sample_triplet(model, tiny_fg_weights(model), plan, SamplerSettings(7, 4, 5.0, "euler", "normal"))
    found = sorted(set(reads.found))
    assert not found, f"the pack read tensors back during the UNet calls: {found}"


def test_two_layers_with_a_box_read_nothing_back(watched):
    model, reads = watched
    chain = (
        LayerChain().add(layer(1, "chair")).add(layer(5, "cat", box=Box(16, 8, 32, 40), empty=make_cond(9)))
    )
    sample_layered(
        model, tiny_fg_weights(model), LayeredPrompts(chain, make_cond(2), None, make_cond(4)),
        make_latent(1, SIZE // 8, SIZE // 8), SETTINGS, LayerFusionOptions(),
    )  # fmt: skip
    found = sorted(set(reads.found))
    assert not found, f"the pack read tensors back during the UNet calls: {found}"


def test_a_decomposition_with_a_mask_reads_nothing_back(watched):
    model, reads = watched
    mask = torch.zeros(SIZE, SIZE)
    mask[16:48, 8:40] = 1.0
    chain = LayerChain().add(layer(1, "ball", mask=mask)).add(layer(5, "box"))
    with torch.inference_mode():
        decompose(
            model, tiny_fg_weights(model), tiny_vae(), torch.rand(1, SIZE, SIZE, 3),
            LayeredPrompts(chain, make_cond(2), make_cond(3), make_cond(4)), SETTINGS, LayerFusionOptions(),
        )  # fmt: skip
    found = sorted(set(reads.found))
    assert not found, f"the pack read tensors back during the UNet calls: {found}"
