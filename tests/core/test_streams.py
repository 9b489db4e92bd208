"""streams.py: row layouts for any chunking, several triplets, prior passes, K foregrounds."""

import pytest
import torch

from layerfusion_core.method.streams import CallLayout, Chunk, Stream, StreamRole, StreamSet, merge, split

FG, BG, BL = Stream(StreamRole.FG), Stream(StreamRole.BG), Stream(StreamRole.BLENDED)


def test_triplet_layout_negative_chunk_first():
    layout = CallLayout.for_call(StreamSet(), [1, 0], batch_size=12)
    assert layout.num_images == 2
    assert [(r.chunk, r.image, str(r.stream)) for r in layout.rows[:6]] == [
        (Chunk.NEGATIVE, 0, "fg0"),
        (Chunk.NEGATIVE, 0, "bg"),
        (Chunk.NEGATIVE, 0, "blended"),
        (Chunk.NEGATIVE, 1, "fg0"),
        (Chunk.NEGATIVE, 1, "bg"),
        (Chunk.NEGATIVE, 1, "blended"),
    ]
    assert layout.rows[6].chunk is Chunk.POSITIVE
    assert layout.indices(FG) == [0, 3, 6, 9]
    assert layout.indices(BL, Chunk.POSITIVE) == [8, 11]
    assert layout.images_of(BG) == [0, 1, 0, 1]


def test_separate_cond_and_uncond_calls():
    neg = CallLayout.for_call(StreamSet(), [1], 3)
    pos = CallLayout.for_call(StreamSet(), [0], 3)
    assert neg.chunks == (Chunk.NEGATIVE,) and pos.chunks == (Chunk.POSITIVE,)
    assert pos.indices(BG) == [1]


def test_prior_pass_layout_holds_only_foregrounds():
    layout = CallLayout.for_call(StreamSet(), [0], 4, fg_only=True)
    assert layout.num_images == 4 and layout.indices(FG) == [0, 1, 2, 3]
    assert not layout.has_stream(BG)


def test_k_foregrounds_and_alpha_mode():
    two = StreamSet(foregrounds=2)
    assert [str(s) for s in two.streams] == ["fg0", "fg1", "bg", "blended"]
    layout = CallLayout.for_call(two, [0], 8)
    assert layout.indices(Stream(StreamRole.FG, 1)) == [1, 5]
    assert layout.role_mask(StreamRole.FG) == [True, True, False, False] * 2
    alpha = StreamSet(blended=False)
    assert [str(s) for s in alpha.streams] == ["fg0", "bg"]


def test_bad_batch_is_refused_with_the_numbers():
    with pytest.raises(ValueError, match="batch 7"):
        CallLayout.for_call(StreamSet(), [1, 0], 7)
    with pytest.raises(ValueError, match="batch 4"):
        CallLayout.for_call(StreamSet(), [0], 4)


@pytest.mark.parametrize(
    "stream_set,chunks,batch",
    [(StreamSet(), [1, 0], 12), (StreamSet(2), [0], 8), (StreamSet(1, False), [1, 0], 4)],
)
def test_split_then_merge_is_identity(stream_set, chunks, batch):
    layout = CallLayout.for_call(stream_set, chunks, batch)
    x = torch.randn(batch, 5, 3)
    parts = split(x, layout)
    assert set(parts) == set(stream_set.streams)
    assert all(p.shape[0] == len(chunks) * layout.num_images for p in parts.values())
    assert torch.equal(merge(parts, layout), x)


def test_split_rows_are_chunk_then_image_ordered():
    layout = CallLayout.for_call(StreamSet(), [1, 0], 6)
    x = torch.arange(6.0)
    assert split(x, layout)[BG].tolist() == [1.0, 4.0]


def test_split_parts_are_views_and_merge_is_a_new_tensor():
    layout = CallLayout.for_call(StreamSet(), [1, 0], 12)
    x = torch.randn(12, 4, 2)
    parts = split(x, layout)
    for stream, part in parts.items():
        assert part.data_ptr() == x[layout.indices(stream)[0]].data_ptr()  # no copy
        assert torch.equal(part, x[layout.indices(stream)])
    merged = merge(parts, layout)
    assert torch.equal(merged, x) and merged.data_ptr() != x.data_ptr()


@pytest.mark.parametrize(
    "chunks,batch,fg_only", [([1, 0], 6, False), ([0], 6, False), ([0, 1], 4, True), ([0, 0, 1], 9, False)]
)
def test_view_of_a_chunk_holds_the_rows_indices_names(chunks, batch, fg_only):
    layout = CallLayout.for_call(StreamSet(), chunks, batch, fg_only=fg_only)
    x = torch.arange(float(batch))
    for stream in layout.streams:
        for chunk in (None, Chunk.POSITIVE, Chunk.NEGATIVE):
            assert layout.view_of(x, stream, chunk).tolist() == layout.indices(stream, chunk)


def test_view_of_and_merge_name_what_is_wrong():
    layout = CallLayout.for_call(StreamSet(), [0], 3)
    with pytest.raises(ValueError, match="fg1"):
        layout.view_of(torch.zeros(3), Stream(StreamRole.FG, 1))
    parts = split(torch.zeros(3, 2), layout)
    with pytest.raises(ValueError, match="missing stream blended"):
        merge({s: p for s, p in parts.items() if s != BL}, layout)
    parts[BG] = torch.zeros(2, 2)
    with pytest.raises(ValueError, match="stream bg has 2 rows, the layout 1"):
        merge(parts, layout)
