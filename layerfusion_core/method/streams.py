"""Stream roles and the batch-row layout of one UNet call.

The latent batch is image-major: for image n the rows are that image's streams in
``StreamSet.streams`` order (FG_0..FG_{K-1}, BG, BLENDED). A UNet call concatenates one
chunk per entry of ComfyUI's ``cond_or_uncond`` (0 = positive, 1 = negative), each chunk
being the whole latent batch (or, in a prior pass, only the FG rows). ``split`` and
``merge`` (and ``CallLayout.view_of``, which they use) are the only functions that slice a
call's batch by stream. Rows being image-major, one stream's rows are every S-th row of the
call (S streams per image): a strided view, no gather.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from functools import cached_property, lru_cache

import torch


class StreamRole(str, Enum):
    FG = "fg"
    BG = "bg"
    BLENDED = "blended"


class Chunk(int, Enum):
    """ComfyUI's cond_or_uncond codes."""

    POSITIVE = 0
    NEGATIVE = 1


@dataclass(frozen=True)
class Stream:
    role: StreamRole
    index: int = 0  # which foreground, for K > 1 foreground streams

    def __str__(self) -> str:
        return f"{self.role.value}{self.index}" if self.role == StreamRole.FG else self.role.value


@dataclass(frozen=True)
class StreamSet:
    """The streams every image of the batch carries, in row order."""

    foregrounds: int = 1
    blended: bool = True

    def __post_init__(self) -> None:
        if self.foregrounds < 1:
            raise ValueError(f"foregrounds: expected >= 1, got {self.foregrounds}")

    @cached_property
    def streams(self) -> tuple[Stream, ...]:
        fgs = tuple(Stream(StreamRole.FG, i) for i in range(self.foregrounds))
        rest = (Stream(StreamRole.BG),) + ((Stream(StreamRole.BLENDED),) if self.blended else ())
        return fgs + rest

    @property
    def fg_streams(self) -> tuple[Stream, ...]:
        return self.streams[: self.foregrounds]

    def name(self, stream: Stream) -> str:
        """How inputs and messages call ``stream``: "fg" while there is one FG, else "fg0", ..."""
        return stream.role.value if self.foregrounds == 1 else str(stream)

    def __len__(self) -> int:
        return len(self.streams)


@dataclass(frozen=True)
class Row:
    chunk: Chunk
    image: int
    stream: Stream


@dataclass(frozen=True)
class CallLayout:
    """Maps each row of one UNet call to (chunk, image, stream)."""

    rows: tuple[Row, ...]
    num_images: int

    @classmethod
    def for_call(
        cls,
        stream_set: StreamSet,
        cond_or_uncond: list[int] | tuple[int, ...],
        batch_size: int,
        fg_only: bool = False,
    ) -> CallLayout:
        """Layout of a call whose chunks are ``cond_or_uncond`` and whose batch is ``batch_size``.

        ``fg_only``: each chunk holds only the FG rows of every image (a prior pass).
        Layouts are cached: a sampling run asks for the same few on every UNet call.
        """
        return _cached_layout(stream_set, tuple(cond_or_uncond or ()), batch_size, fg_only)

    @classmethod
    def _build(
        cls, stream_set: StreamSet, cond_or_uncond: tuple[int, ...], batch_size: int, fg_only: bool
    ) -> CallLayout:
        streams = stream_set.fg_streams if fg_only else stream_set.streams
        if not cond_or_uncond:
            raise ValueError("cond_or_uncond: expected at least one chunk, got none")
        chunks = [Chunk(c) for c in cond_or_uncond]
        rows_per_chunk, remainder = divmod(batch_size, len(chunks))
        if remainder or rows_per_chunk % len(streams):
            raise ValueError(
                f"UNet call of batch {batch_size} with chunks {list(cond_or_uncond)} does not hold "
                f"whole images of {len(streams)} streams ({', '.join(map(str, streams))})"
            )
        num_images = rows_per_chunk // len(streams)
        rows = tuple(
            Row(chunk, image, stream) for chunk in chunks for image in range(num_images) for stream in streams
        )
        return cls(rows, num_images)

    @property
    def batch_size(self) -> int:
        return len(self.rows)

    @cached_property
    def chunks(self) -> tuple[Chunk, ...]:
        return tuple(dict.fromkeys(row.chunk for row in self.rows))

    def has_stream(self, stream: Stream) -> bool:
        return any(row.stream == stream for row in self.rows)

    def indices(self, stream: Stream, chunk: Chunk | None = None) -> list[int]:
        """Row indices of ``stream`` in (chunk, image) order, optionally of one chunk only."""
        return [
            i
            for i, row in enumerate(self.rows)
            if row.stream == stream and (chunk is None or row.chunk == chunk)
        ]

    def role_mask(self, role: StreamRole) -> list[bool]:
        return [row.stream.role == role for row in self.rows]

    def images_of(self, stream: Stream) -> list[int]:
        """For each row of ``stream`` (in ``indices`` order), its image index."""
        return [row.image for row in self.rows if row.stream == stream]

    @cached_property
    def streams(self) -> tuple[Stream, ...]:
        return tuple(dict.fromkeys(row.stream for row in self.rows))

    @cached_property
    def _device_indices(self) -> dict[tuple, torch.Tensor]:
        return {}

    def index_tensor(
        self, stream: Stream, device: torch.device | str = "cpu", chunk: Chunk | None = None
    ) -> torch.Tensor:
        """``indices(stream, chunk)`` as a LongTensor on ``device`` (cached per device)."""
        key = (stream, chunk, str(device))
        cached = self._device_indices.get(key)
        if cached is None:
            cached = torch.tensor(self.indices(stream, chunk), dtype=torch.long, device=device)
            self._device_indices[key] = cached
        return cached

    def role_tensor(self, role: StreamRole, device: torch.device | str = "cpu") -> torch.Tensor:
        """Row indices of every stream of ``role`` (all FG rows, say) as a LongTensor on
        ``device``, in row order (cached per device)."""
        key = ("role", role, str(device))
        cached = self._device_indices.get(key)
        if cached is None:
            cached = torch.tensor(self.role_rows(role), dtype=torch.long, device=device)
            self._device_indices[key] = cached
        return cached

    def role_rows(self, role: StreamRole) -> tuple[int, ...]:
        """Row indices of every stream of ``role``, in row order (Python ints: no tensor)."""
        return tuple(i for i, is_role in enumerate(self.role_mask(role)) if is_role)

    def image_tensor(self, stream: Stream, device: torch.device | str = "cpu") -> torch.Tensor:
        """``images_of(stream)`` as a LongTensor on ``device`` (cached per device)."""
        key = ("images", stream, str(device))
        cached = self._device_indices.get(key)
        if cached is None:
            cached = torch.tensor(self.images_of(stream), dtype=torch.long, device=device)
            self._device_indices[key] = cached
        return cached

    @cached_property
    def _positions(self) -> dict[Stream, int]:
        return {stream: i for i, stream in enumerate(self.streams)}

    @cached_property
    def _chunk_codes(self) -> tuple[Chunk, ...]:
        """The chunk of each chunk of rows, in call order (a code may repeat)."""
        rows_per_chunk = self.num_images * len(self.streams)
        return tuple(self.rows[i].chunk for i in range(0, self.batch_size, rows_per_chunk))

    def view_of(self, x: torch.Tensor, stream: Stream, chunk: Chunk | None = None) -> torch.Tensor:
        """The rows ``indices(stream, chunk)`` of x [B, ...] as a view [rows, ...] (every S-th
        row, S streams per image, within the chunk's rows when ``chunk`` is given); a gather
        only where a chunk code repeats among others, which no view can select."""
        position = self._positions.get(stream)
        if position is None:
            raise ValueError(
                f"view_of: stream {stream} is not in this call ({', '.join(map(str, self.streams))})"
            )
        rows = x
        if chunk is not None:
            chunk_rows = self.num_images * len(self.streams)
            at = [i for i, code in enumerate(self._chunk_codes) if code == chunk]
            if len(at) == 1:
                rows = x.narrow(0, at[0] * chunk_rows, chunk_rows)
            elif len(at) != len(self._chunk_codes):
                return x.index_select(0, self.index_tensor(stream, x.device, chunk))
        return rows.unflatten(0, (-1, len(self.streams))).select(1, position)


@lru_cache(maxsize=64)
def _cached_layout(
    stream_set: StreamSet, cond_or_uncond: tuple[int, ...], batch_size: int, fg_only: bool
) -> CallLayout:
    return CallLayout._build(stream_set, cond_or_uncond, batch_size, fg_only)


def split(x: torch.Tensor, layout: CallLayout) -> dict[Stream, torch.Tensor]:
    """[B, ...] -> {stream: [chunks * images, ...]} with rows in (chunk, image) order; each
    part is a strided view of x (write to it and x changes)."""
    if x.shape[0] != layout.batch_size:
        raise ValueError(f"split: tensor batch {x.shape[0]} does not match the layout's {layout.batch_size}")
    return {s: layout.view_of(x, s) for s in layout.streams}


def merge(parts: dict[Stream, torch.Tensor], layout: CallLayout) -> torch.Tensor:
    """Inverse of ``split``: a new [B, ...] tensor with each stream's rows at its call rows
    (one interleaving copy)."""
    rows = layout.batch_size // len(layout.streams)
    for stream in layout.streams:
        if stream not in parts:
            raise ValueError(f"merge: missing stream {stream}")
        if parts[stream].shape[0] != rows:
            raise ValueError(f"merge: stream {stream} has {parts[stream].shape[0]} rows, the layout {rows}")
    return torch.stack([parts[s] for s in layout.streams], dim=1).flatten(0, 1)
