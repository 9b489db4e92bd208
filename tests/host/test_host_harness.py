"""The host harness itself: ComfyUI imports in library mode, the tiny SDXL model samples, a pack
loads through ComfyUI's loader, and the forced cond/uncond split really splits."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image
from support.comfy_import import find_comfyui
from support.host_probes import UNetCall, low_free_memory, record_unet_calls
from support.pack_loading import PackLoadError, load_pack, run_node, unload_pack
from support.tiny_sdxl import TINY_SDXL_BLOCKS, TINY_SDXL_DIM_HEAD, make_cond, make_latent

STEPS = 3


def _ksample(host, model, latent, steps=STEPS, cfg=5.0, positive=None, negative=None, seed=0):
    positive = make_cond(1) if positive is None else positive
    negative = make_cond(2) if negative is None else negative
    (out,) = host.nodes.common_ksampler(
        model, seed, steps, cfg, "euler", "normal", positive, negative, latent
    )
    return out["samples"]


def test_comfyui_is_imported_in_library_mode(comfy_host):
    assert Path(comfy_host.nodes.__file__).resolve() == comfy_host.root / "nodes.py"
    assert comfy_host.model_management.get_torch_device().type == "cpu"
    assert comfy_host.model_management.cpu_state == comfy_host.model_management.CPUState.CPU
    # ComfyUI's output folder is redirected away from the checkout.
    assert comfy_host.root not in Path(comfy_host.folder_paths.get_output_directory()).parents


def _fake_comfyui(root: Path) -> Path:
    for name in ("nodes.py", "folder_paths.py", "comfy/model_management.py"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()
    return root


def test_find_comfyui_search_order(tmp_path):
    host_root = _fake_comfyui(tmp_path / "host")
    home = tmp_path / "home"
    _fake_comfyui(home / "ComfyUI")
    in_custom_nodes = host_root / "custom_nodes" / "ComfyUI-LayerFusion"
    elsewhere = tmp_path / "src" / "ComfyUI-LayerFusion"

    explicit = find_comfyui({"COMFYUI_PATH": str(host_root)}, elsewhere, home)
    assert explicit.root == host_root.resolve()
    assert find_comfyui({}, in_custom_nodes, home).root == host_root.resolve()
    assert find_comfyui({}, elsewhere, home).root == (home / "ComfyUI").resolve()

    wrong = find_comfyui({"COMFYUI_PATH": str(tmp_path / "missing")}, in_custom_nodes, home)
    assert wrong.root is None and "not falling back" in wrong.how
    nothing = find_comfyui({}, elsewhere, tmp_path / "nohome")
    assert nothing.root is None and str(tmp_path / "nohome" / "ComfyUI") in nothing.how


def test_tiny_sdxl_samples_a_batch_of_three_through_common_ksampler(comfy_host, tiny_sdxl):
    samples = _ksample(comfy_host, tiny_sdxl, make_latent(3))
    again = _ksample(comfy_host, tiny_sdxl, make_latent(3))

    assert samples.shape == (3, 4, 16, 16)
    assert torch.isfinite(samples).all()
    assert samples.abs().amax() > 0
    assert not torch.allclose(samples[0], samples[1]), "rows start from different noise"
    assert torch.equal(samples, again), "same seed, same model: same result"


def test_per_row_positive_through_comfy_sample(comfy_host, tiny_sdxl):
    latent = make_latent(3)["samples"]
    noise = comfy_host.sample.prepare_noise(latent, 7)
    stacked = [
        [
            torch.cat([make_cond(s)[0][0] for s in (1, 2, 3)]),
            {"pooled_output": torch.cat([make_cond(s)[0][1]["pooled_output"] for s in (1, 2, 3)])},
        ]
    ]

    def run(positive):
        return comfy_host.sample.sample(
            tiny_sdxl, noise, STEPS, 5.0, "euler", "normal", positive, make_cond(9), latent, seed=7
        )

    per_row = run(stacked)
    shared = run(make_cond(1))

    assert per_row.shape == (3, 4, 16, 16) and torch.isfinite(per_row).all()
    scale = shared.abs().amax()
    assert (per_row[0] - shared[0]).abs().amax() <= 1e-5 * scale, "row 0 has the shared prompt"
    assert (per_row[1] - shared[1]).abs().amax() > 1e-3 * scale, "row 1 follows its own prompt"


def test_tiny_sdxl_transformer_blocks_match_the_table(comfy_host, tiny_sdxl):
    seen = []

    def attn1_patch(n, context, value, extra_options):
        block = extra_options["block"]
        seen.append(
            (
                (block[0], block[1], extra_options["block_index"]),
                extra_options["n_heads"],
                extra_options["dim_head"],
            )
        )
        return n, context, value

    model = tiny_sdxl.clone()
    model.set_model_attn1_patch(attn1_patch)
    _ksample(comfy_host, model, make_latent(1), steps=1)

    expected = [(b.key, b.heads, TINY_SDXL_DIM_HEAD) for b in TINY_SDXL_BLOCKS]
    assert seen[: len(expected)] == expected
    assert len(seen) == len(expected), "one UNet call (cond and uncond batched together)"
    assert not tiny_sdxl.model_options["transformer_options"], "the shared model was not patched"


def test_cond_and_uncond_share_one_call_by_default(comfy_host, tiny_sdxl):
    model, calls = record_unet_calls(tiny_sdxl)
    _ksample(comfy_host, model, make_latent(3), steps=2)
    assert calls == [UNetCall(6, (1, 0))] * 2


def test_forced_split_gives_separate_uncond_then_cond_calls(comfy_host, tiny_sdxl):
    model, calls = record_unet_calls(tiny_sdxl)
    together = _ksample(comfy_host, model, make_latent(3), steps=2)
    calls.clear()
    with low_free_memory():
        split = _ksample(comfy_host, model, make_latent(3), steps=2)

    assert calls == [UNetCall(3, (1,)), UNetCall(3, (0,))] * 2
    # Only the batching differs; samples are in latent units (hundreds: noise / 0.13025).
    assert (split - together).abs().amax() <= 1e-5 * together.abs().amax()


def test_forced_split_fixture(comfy_host, tiny_sdxl, forced_split):
    model, calls = record_unet_calls(tiny_sdxl)
    _ksample(comfy_host, model, make_latent(2), steps=1)
    assert calls == [UNetCall(2, (1,)), UNetCall(2, (0,))]


def test_predict_noise_wrapper_receives_the_guider_and_the_full_batch(comfy_host, tiny_sdxl):
    seen = []

    def wrapper(executor, x, timestep, model_options, seed):
        seen.append((type(executor.class_obj).__name__, tuple(x.shape), tuple(timestep.shape), seed))
        assert "transformer_options" in model_options
        return executor(x, timestep, model_options, seed)

    model = tiny_sdxl.clone()
    model.add_wrapper_with_key(
        comfy_host.patcher_extension.WrappersMP.PREDICT_NOISE, "layerfusion_test", wrapper
    )
    _ksample(comfy_host, model, make_latent(3), steps=2, seed=5)

    assert seen == [("CFGGuider", (3, 4, 16, 16), (3,), 5)] * 2


PROBE_INIT = '''
"""Throwaway pack: the same entry-point shape as ours (relative import inside the
entry point, a nodes/ subpackage)."""


async def comfy_entrypoint():
    from .nodes import ProbeExtension

    return ProbeExtension()
'''

PROBE_NODES = """
from comfy_api.latest import ComfyExtension, io, ui

PROBE = io.Custom("LAYERFUSION_HARNESS_PROBE")


class HarnessProbe(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LayerFusionHarnessProbe",
            display_name="LayerFusion harness probe",
            category="LayerFusion/tests",
            inputs=[
                io.Image.Input("image"),
                io.Int.Input("scale", default=2, min=1, max=8),
                io.Combo.Input("mode", options=["keep", "invert"], default="keep"),
            ],
            outputs=[io.Image.Output("image_out"), PROBE.Output("probe")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, image, scale, mode):
        out = 1.0 - image if mode == "invert" else image
        saved = ui.ImageSaveHelper.get_save_images_ui(out, "harness_probe", cls=cls)
        return io.NodeOutput(out, {"scale": scale, "prompt": cls.hidden.prompt}, ui=saved)


class ProbeExtension(ComfyExtension):
    async def get_node_list(self):
        return [HarnessProbe]
"""


def _write_pack(folder: Path, init: str, nodes: str) -> Path:
    (folder / "nodes").mkdir(parents=True)
    (folder / "__init__.py").write_text(textwrap.dedent(init))
    (folder / "nodes" / "__init__.py").write_text(textwrap.dedent(nodes))
    return folder


def test_temporary_v3_pack_loads_through_comfyui_loader(comfy_host, tmp_path):
    folder = _write_pack(tmp_path / "custom_nodes" / "lf-harness.probe", PROBE_INIT, PROBE_NODES)
    loaded = load_pack(comfy_host, folder)
    try:
        node = loaded.node("LayerFusionHarnessProbe")
        assert loaded.node_ids == ("LayerFusionHarnessProbe",)
        assert comfy_host.nodes.NODE_CLASS_MAPPINGS["LayerFusionHarnessProbe"] is node
        assert issubclass(node, comfy_host.io.ComfyNode)
        assert (
            comfy_host.nodes.NODE_DISPLAY_NAME_MAPPINGS[node.GET_SCHEMA().node_id]
            == "LayerFusion harness probe"
        )
        assert node.RELATIVE_PYTHON_MODULE == "custom_nodes.lf-harness.probe"

        info = node.GET_NODE_INFO_V1()  # what /object_info serves
        assert info["output"] == ["IMAGE", "LAYERFUSION_HARNESS_PROBE"]
        mode_type, mode_options = info["input"]["required"]["mode"]
        assert (mode_type, mode_options["options"]) == ("COMBO", ["keep", "invert"])
        assert info["input_order"]["required"] == ["image", "scale", "mode"]
        assert set(info["input"]["hidden"]) == {"prompt", "extra_pnginfo"}
        assert info["output_node"] is True

        image = torch.rand(1, 8, 8, 4)
        prompt = {"1": {"class_type": "LayerFusionHarnessProbe", "inputs": {}}}
        out = run_node(
            node,
            hidden={"PROMPT": prompt, "EXTRA_PNGINFO": {"workflow": {}}},
            image=image,
            scale=3,
            mode="invert",
        )

        torch.testing.assert_close(out.result[0], 1.0 - image)
        assert out.result[1] == {"scale": 3, "prompt": prompt}
        (saved,) = out.ui.as_dict()["images"]
        png = Image.open(
            Path(comfy_host.folder_paths.get_output_directory()) / saved["subfolder"] / saved["filename"]
        )
        assert png.mode == "RGBA", "a 4-channel IMAGE is saved as an RGBA PNG"
        assert json.loads(png.text["prompt"]) == prompt
    finally:
        unload_pack(comfy_host, loaded)
    assert "LayerFusionHarnessProbe" not in comfy_host.nodes.NODE_CLASS_MAPPINGS


def test_pack_load_failure_carries_comfyuis_message(comfy_host, tmp_path):
    broken = PROBE_NODES.replace("from comfy_api.latest", "import no_such_module_xyz\nfrom comfy_api.latest")
    folder = _write_pack(tmp_path / "broken_pack", PROBE_INIT, broken)
    with pytest.raises(PackLoadError, match="no_such_module_xyz"):
        load_pack(comfy_host, folder)
    assert "LayerFusionHarnessProbe" not in comfy_host.nodes.NODE_CLASS_MAPPINGS
