"""The LayerDiffuse files this pack knows by name: what each is, where to download it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

LAYERDIFFUSION_V1 = "https://huggingface.co/LayerDiffusion/layerdiffusion-v1/resolve/main/"
LAYERDIFFUSE_DIFFUSERS = "https://huggingface.co/lllyasviel/LayerDiffuse_Diffusers/resolve/main/"


class FileKind(str, Enum):
    FG_LORA = "fg_lora"  # SDXL attention LoRA (FG weights)
    FG_OFFSETS = "fg_offsets"  # SDXL attention offsets, diffusers names (FG weights)
    DECODER = "decoder"  # transparent VAE decoder
    ENCODER = "encoder"  # transparent VAE encoder (not used yet)
    UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class KnownFile:
    name: str
    kind: FileKind
    url: str
    size_mb: int
    note: str = ""


KNOWN_FILES: tuple[KnownFile, ...] = (
    KnownFile("layer_xl_transparent_attn.safetensors", FileKind.FG_LORA, LAYERDIFFUSION_V1, 743),
    KnownFile("ld_diffusers_sdxl_attn.safetensors", FileKind.FG_OFFSETS, LAYERDIFFUSE_DIFFUSERS, 1910),
    KnownFile("vae_transparent_decoder.safetensors", FileKind.DECODER, LAYERDIFFUSION_V1, 208),
    KnownFile(
        "ld_diffusers_sdxl_vae_transparent_decoder.safetensors", FileKind.DECODER, LAYERDIFFUSE_DIFFUSERS, 208
    ),
    KnownFile("vae_transparent_encoder.safetensors", FileKind.ENCODER, LAYERDIFFUSION_V1, 2),
    KnownFile(
        "layer_xl_transparent_conv.safetensors",
        FileKind.UNSUPPORTED,
        LAYERDIFFUSION_V1,
        3620,
        "the conv-injection FG model changes every non-attention weight (~1.8 B parameters); applying it "
        "to the FG rows only would need a second copy of the UNet, so LayerFusion uses the attention file "
        "layer_xl_transparent_attn.safetensors instead",
    ),
)

BY_NAME = {f.name: f for f in KNOWN_FILES}
DEFAULT_FG_FILE = "layer_xl_transparent_attn.safetensors"
DEFAULT_DECODER_FILE = "vae_transparent_decoder.safetensors"


# UNVERIFIED pinned SHA-256 values, a fallback for when the hub's LFS metadata cannot be read
# at download time (that metadata, the X-Linked-Etag of the resolve URL, is the primary
# source). All values are empty: no hash has been checked against the published files yet,
# and an empty value means "not pinned". Fill one in only from a file verified by hand.
PINNED_SHA256_UNVERIFIED: dict[str, str] = {
    f.name: "" for f in KNOWN_FILES if f.kind is not FileKind.UNSUPPORTED
}


def download_url(name: str) -> str:
    return BY_NAME[name].url + name


def pinned_sha256(name: str) -> str | None:
    """The UNVERIFIED pinned SHA-256 of a known file, or None when none is pinned."""
    return PINNED_SHA256_UNVERIFIED.get(name) or None


SD15_MARKERS = ("sd15", "sd_15", "sd1.5")


def looks_like_sd15(name: str) -> bool:
    """Whether a file name marks a Stable Diffusion 1.5 file."""
    lower = name.lower()
    return any(marker in lower for marker in SD15_MARKERS)


def unsupported_reason(name: str) -> str | None:
    """Why a file cannot be used as SDXL FG weights, judged by its name, or None."""
    lower = name.lower()
    known = BY_NAME.get(name)
    if known is not None and known.kind is FileKind.UNSUPPORTED:
        return known.note
    if looks_like_sd15(name):
        return "it is a Stable Diffusion 1.5 file; LayerFusion runs on SDXL"
    if "_conv" in lower and "transparent" in lower:
        return BY_NAME["layer_xl_transparent_conv.safetensors"].note
    return None


NOT_DOWNLOADED = " (not downloaded)"
"""Marks a known file that is not on disk in the loaders' lists."""


def mark_absent(name: str) -> str:
    return name + NOT_DOWNLOADED


def unmark(name: str) -> str:
    """A list entry as the file name (without the not-downloaded mark)."""
    return name.removesuffix(NOT_DOWNLOADED)


def missing_file_message(name: str, folder: str) -> str:
    """Where a missing file should go and, for a known file, where to get it."""
    known = BY_NAME.get(name)
    if known is None or known.kind is FileKind.UNSUPPORTED:
        return f"{name} was not found in {folder} (models/layer_model/); put the file in that folder."
    return (
        f"{name} was not found in {folder} (models/layer_model/). Download it from {download_url(name)} "
        "and put it in that folder, or turn auto_download on."
    )
