"""Save Layers never overwrites, writes a triplet whole or not at all, and copes with long
prefixes: real files in ComfyUI's output folder."""

import os
from pathlib import Path

import pytest
import torch
from PIL import Image
from support.pack_loading import run_node


def triplet(batch: int = 2, seed: int = 3) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "foreground": torch.rand(batch, 8, 12, 4, generator=gen),
        "background": torch.rand(batch, 8, 12, 3, generator=gen),
        "blended": torch.rand(batch, 8, 12, 3, generator=gen),
    }


def save(pack, prefix, seed=3, **kw):
    return run_node(
        pack.node("LayerFusionSaveLayers"), **triplet(seed=seed), filename_prefix=prefix, save_psd=False, **kw
    )


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def output_folder(comfy_host, sub: str) -> Path:
    return Path(comfy_host.folder_paths.get_output_directory()) / sub


def test_batch_num_prefix_never_overwrites_an_earlier_run(comfy_host, pack, tmp_path):
    prefix = f"{tmp_path.name}/b%batch_num%"
    save(pack, prefix, seed=1)
    folder = output_folder(comfy_host, tmp_path.name)
    first = snapshot(folder)
    assert len(first) == 6
    save(pack, prefix, seed=2)
    second = snapshot(folder)
    assert len(second) == 12
    assert all(second[name] == data for name, data in first.items())  # the first run is intact


def test_a_failed_write_leaves_no_part_of_that_triplet_and_old_files_untouched(
    comfy_host, pack, tmp_path, monkeypatch
):
    prefix = f"{tmp_path.name}/layers"
    save(pack, prefix, seed=1)
    folder = output_folder(comfy_host, tmp_path.name)
    before = snapshot(folder)
    real_save = Image.Image.save
    calls = []

    def failing_save(self, fp, *args, **kwargs):
        calls.append(fp)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        save(pack, prefix, seed=2, soft_mask=torch.rand(2, 8, 12))
    monkeypatch.undo()
    assert snapshot(folder) == before  # nothing of the failed triplet, no temporary file, old files intact


def test_a_prefix_that_fits_the_name_limit_saves(comfy_host, pack, tmp_path):
    longest = "_00001_soft_mask.png"
    name = "x" * (255 - len(longest))
    run_node(
        pack.node("LayerFusionSaveLayers"), **triplet(batch=1), soft_mask=torch.rand(1, 8, 12),
        filename_prefix=f"{tmp_path.name}/{name}", save_psd=False,
    )  # fmt: skip
    folder = output_folder(comfy_host, tmp_path.name)
    assert len(name + longest) == 255
    assert sorted(os.listdir(folder)) == sorted(
        f"{name}_00001_{s}.png" for s in ("fg", "bg", "blended", "soft_mask")
    )


def test_masks_and_psd_are_reported_for_clients_that_fetch_every_file(comfy_host, pack, tmp_path):
    pytest.importorskip("psd_tools")
    out = run_node(
        pack.node("LayerFusionSaveLayers"), **triplet(batch=1), soft_mask=torch.rand(1, 8, 12),
        hard_mask=torch.rand(1, 8, 12), filename_prefix=f"{tmp_path.name}/r", save_psd=True,
    )  # fmt: skip
    reported = out.ui.as_dict()
    shown = [r["filename"] for r in reported["images"]]
    others = [r["filename"] for r in reported["layerfusion_files"]]
    assert shown == [f"r_00001_{s}.png" for s in ("fg", "bg", "blended")]
    assert others == ["r_00001_soft_mask.png", "r_00001_hard_mask.png", "r_00001_layers.psd"]
    on_disk = sorted(os.listdir(output_folder(comfy_host, tmp_path.name)))
    assert on_disk == sorted(shown + others)
