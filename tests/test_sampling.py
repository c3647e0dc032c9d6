"""Frame sampling rules: official inference context frames, query windows, training clips."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from glus.data.sampling import (TrainingFrames, inference_context_frames, min_training_frames, query_window,
                                sample_training_frames, segment_bounds)

from conftest import OFFICIAL_TINY

TINY = OFFICIAL_TINY


def _official_context_frames(frame_num: int, k: int) -> list[int]:
    """Oracle written from inference_iter.py's frame-clip logic: build every clip, take the middle one, and
    resolve indices the way Python list indexing of the frame paths does."""
    indices = np.linspace(0, frame_num, k + 1, dtype=int)
    clips = [[min(indices[j] + i, indices[j + 1] - 1) for j in range(k)]
             for i in range(math.ceil(frame_num / k))]
    chosen = clips[len(clips) // 2]
    frames = list(range(frame_num))
    return [frames[int(f)] for f in chosen]


def test_ten_frames_gives_reference_context() -> None:
    assert inference_context_frames(10, 4) == [1, 3, 6, 8]
    assert inference_context_frames(10, 0) == []  # the local-only ablation: no global view


def test_reference_passes_context_and_windows() -> None:
    reference = json.loads((TINY / "reference.json").read_text())
    checked = 0
    for run in reference["runs"]:
        for expression in run["expressions"]:
            num_frames = len(expression["frames"])
            for pass_ in expression["passes"]:
                assert inference_context_frames(num_frames, 4) == pass_["context_frames"]
                for i, step in enumerate(pass_["steps"]):
                    window = query_window(i, 4)  # every run used --question_frame_num 4
                    assert window == step["rel_pos_list"]
                    assert [pass_["question_frames"][r] for r in window] == step["question_frames_in_prompt"]
                    checked += 1
    assert checked == 104


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6, 8])
def test_context_frames_equal_official_for_many_lengths(k: int) -> None:
    for t in range(1, 400):
        assert inference_context_frames(t, k) == _official_context_frames(t, k), (t, k)


def test_context_frames_formula_for_k4() -> None:
    # The spec's closed form for K = 4: b = linspace(0, T, 5), c = ceil(T/4)//2, frame j = min(b[j]+c, b[j+1]-1).
    for t in range(4, 2000, 7):
        b = [(j * t) // 4 for j in range(5)]
        c = -(-t // 4) // 2
        assert inference_context_frames(t, 4) == [min(b[j] + c, b[j + 1] - 1) for j in range(4)]


def test_context_frames_lie_in_their_segments_when_long_enough() -> None:
    for k in (1, 3, 4, 7):
        for t in range(k, 300):
            frames = inference_context_frames(t, k)
            b = segment_bounds(t, k)
            assert all(b[j] <= f < b[j + 1] for j, f in enumerate(frames)), (t, k)
            assert frames == sorted(set(frames))


def test_short_videos_repeat_and_wrap_like_official() -> None:
    # T < K: empty segments; the official -1 index means the last frame.
    assert inference_context_frames(1, 4) == [0, 0, 0, 0]
    assert inference_context_frames(2, 4) == [1, 0, 0, 1]
    assert inference_context_frames(3, 4) == [2, 0, 1, 2]
    for t in range(1, 4):
        frames = inference_context_frames(t, 4)
        assert len(frames) == 4 and all(0 <= f < t for f in frames)
    with pytest.raises(ValueError):
        inference_context_frames(0, 4)
    with pytest.raises(ValueError):
        segment_bounds(5, 0)


def test_query_window() -> None:
    assert [query_window(i, 4) for i in range(6)] == [
        [0], [0, 1], [0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5]]
    assert query_window(7, 1) == [7]
    with pytest.raises(ValueError):
        query_window(-1, 4)


def test_training_sampler_distribution() -> None:
    rng = np.random.default_rng(0)
    t, k, q = 23, 4, 4
    b = segment_bounds(t, k)
    seen_context = [set() for _ in range(k)]
    starts = set()
    for _ in range(2000):
        clip = sample_training_frames(t, k, q, rng)
        assert isinstance(clip, TrainingFrames) and len(clip.context) == k and len(clip.query) == q
        assert clip.all == clip.context + clip.query
        for j, f in enumerate(clip.context):
            assert b[j] <= f < b[j + 1]
            seen_context[j].add(f)
        assert list(clip.query) == list(range(clip.query[0], clip.query[0] + q))
        starts.add(clip.query[0])
    # Every frame of every segment and every possible start occurs (uniform draws).
    assert [sorted(s) for s in seen_context] == [list(range(b[j], b[j + 1])) for j in range(k)]
    assert starts == set(range(t - q + 1))


def test_training_sampler_many_lengths_and_reproducible() -> None:
    for k, q in ((4, 4), (2, 5), (6, 1)):
        for t in range(min_training_frames(k, q), 120):
            a = sample_training_frames(t, k, q, np.random.default_rng(t))
            again = sample_training_frames(t, k, q, np.random.default_rng(t))
            assert a == again
            assert all(0 <= f < t for f in a.all)
            assert list(a.context) == sorted(a.context) and len(set(a.context)) == k
    assert min_training_frames(4, 4) == 4 and min_training_frames(2, 6) == 6
    rng = np.random.default_rng(0)
    for t, k, q in ((3, 4, 2), (5, 2, 6)):
        with pytest.raises(ValueError):
            sample_training_frames(t, k, q, rng)
    with pytest.raises(ValueError):
        sample_training_frames(10, 4, 0, rng)
