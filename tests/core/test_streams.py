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
