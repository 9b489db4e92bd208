"""Save Layers never overwrites, writes a triplet whole or not at all, copes with long
prefixes, keeps any layer name in the PSD, and refuses a prefix, a name length or a canvas
that files cannot hold before writing anything: real files in ComfyUI's output folder."""

import os
import re
from pathlib import Path

import pytest
import torch
from PIL import Image
from support.pack_loading import run_node

from layerfusion_core.layers.bundle import LayerBundle


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


# --- names the file system or the PSD format cannot hold -----------------------------------------


def named_bundle(names: list[str], width: int = 12, height: int = 8) -> LayerBundle:
    """A decoded bundle of one image with one FG layer per name (back to front)."""
    gen = torch.Generator().manual_seed(7)
    order = tuple(f"fg{k}" for k in range(len(names)))
    images = {k: torch.rand(1, height, width, 4, generator=gen) for k in order}
    images.update({k: torch.rand(1, height, width, 3, generator=gen) for k in ("bg", "blended")})
    masks = {k: (torch.rand(1, height, width, generator=gen),) * 2 for k in order}
    latents = {k: torch.zeros(1, 4, 1, 1) for k in (*order, "bg", "blended")}
    return LayerBundle(
        order, dict(zip(order, names, strict=True)), latents, masks, {}, None, {}, None, None
    ).with_images(images)


def test_layer_names_outside_mac_roman_or_too_long_keep_every_file_and_the_unicode_names(
    comfy_host, pack, tmp_path
):
    psd_tools = pytest.importorskip("psd_tools")
    long_name = "long " + "猫" * 995  # 1000 characters: the PSD keeps its first 255
    names = ["猫", "🐱", long_name, "red cat 赤い猫"]
    run_node(
        pack.node("LayerFusionSaveLayers"), bundle=named_bundle(names),
        filename_prefix=f"{tmp_path.name}/u", save_psd=True,
    )  # fmt: skip
    folder = output_folder(comfy_host, tmp_path.name)
    stems = ["fg0", "fg1", "fg2_long", "fg3_red_cat"]  # the file names keep ASCII only
    masks = [f"{s}_{m}_mask" for s in stems for m in ("soft", "hard")]
    assert sorted(os.listdir(folder)) == sorted(
        [f"u_00001_{s}.png" for s in (*stems, "bg", "blended", *masks)] + ["u_00001_layers.psd"]
    )
    psd = psd_tools.PSDImage.open(folder / "u_00001_layers.psd")
    assert [layer.name for layer in psd] == [
        "background",
        "猫",
        "🐱",
        long_name[:255],
        "red cat 赤い猫",
        "blended",
    ]


@pytest.mark.parametrize(
    ("prefix", "what"),
    [
        ("a\x00b", r"NUL \(U\+0000\)"),
        ("sub/a\nb", r"U\+000A"),
        ("a\x1fb", r"U\+001F"),
        ("a\x7fb", r"U\+007F"),
        *((f"sub/a{c}b", re.escape(repr(c))) for c in '<>:"|?*'),
    ],
)
def test_a_prefix_with_characters_files_cannot_hold_is_refused_by_name(
    comfy_host, pack, tmp_path, prefix, what
):
    with pytest.raises(ValueError, match=rf"filename_prefix: .*{what}"):
        save(pack, f"{tmp_path.name}/{prefix}")
    assert not output_folder(comfy_host, tmp_path.name).exists()  # nothing written, no folder made


@pytest.mark.parametrize(
    "prefix", ["", "   ", ".", "..", ".layers", "{sub}/.layers", "{sub}/..", "{sub}/   "]
)
def test_a_prefix_that_would_write_hidden_files_is_refused(comfy_host, pack, tmp_path, prefix):
    out = Path(comfy_host.folder_paths.get_output_directory())
    before = sorted(os.listdir(out)) if out.exists() else []
    with pytest.raises(ValueError, match=r"filename_prefix: .*(empty|hidden).*LayerFusion/layers"):
        save(pack, prefix.format(sub=tmp_path.name))
    assert (sorted(os.listdir(out)) if out.exists() else []) == before
    assert not output_folder(comfy_host, tmp_path.name).exists()


def test_subfolders_still_work(comfy_host, pack, tmp_path):
    save(pack, f"{tmp_path.name}/a/b.c/layers %year%")
    folder = output_folder(comfy_host, tmp_path.name) / "a" / "b.c"
    assert len(os.listdir(folder)) == 6 and all(n.startswith("layers ") for n in os.listdir(folder))


def test_a_bundle_prefix_too_long_for_its_suffixes_is_refused_before_writing(comfy_host, pack, tmp_path):
    names = ["n" * 60, "cat"]  # fg0_<40 n>_soft_mask.png: the longest suffix
    longest = "_00001_fg0_" + "n" * 40 + "_soft_mask.png"
    fits = 255 - len(longest)  # 190
    with pytest.raises(ValueError, match=rf"filename_prefix: .*200 .*at most {fits} "):
        run_node(
            pack.node("LayerFusionSaveLayers"), bundle=named_bundle(names),
            filename_prefix=f"{tmp_path.name}/{'x' * 200}", save_psd=False,
        )  # fmt: skip
    assert not output_folder(comfy_host, tmp_path.name).exists()
    run_node(
        pack.node("LayerFusionSaveLayers"), bundle=named_bundle(names),
        filename_prefix=f"{tmp_path.name}/{'x' * fits}", save_psd=False,
    )  # fmt: skip
    written = os.listdir(output_folder(comfy_host, tmp_path.name))
    assert len(written) == 8 and max(len(n) for n in written) == 255


def test_a_canvas_too_wide_for_a_psd_is_refused_before_writing(comfy_host, pack, tmp_path):
    pytest.importorskip("psd_tools")
    wide = {
        "foreground": torch.rand(1, 1, 30_001, 4),
        "background": torch.rand(1, 1, 30_001, 3),
        "blended": torch.rand(1, 1, 30_001, 3),
    }
    node = pack.node("LayerFusionSaveLayers")
    with pytest.raises(ValueError, match=r"save_psd: .*30001x1 .*30,000 px"):
        run_node(node, **wide, filename_prefix=f"{tmp_path.name}/w", save_psd=True)
    assert not output_folder(comfy_host, tmp_path.name).exists()
    run_node(node, **wide, filename_prefix=f"{tmp_path.name}/w", save_psd=False)  # the PNGs alone save
    assert len(os.listdir(output_folder(comfy_host, tmp_path.name))) == 3
