"""One FastSegmenter serves several videos: per-video state lives in the call's VideoSession, not on the
segmenter, so two videos segmented at the same time (two threads) or one after another give the masks each gives
alone, and nothing of a video is left on the segmenter afterwards."""

from __future__ import annotations

import threading

import numpy as np
import torch

from glus.data.synthetic import make_video
from glus.inference.frames import FrameStore
from glus.inference.pipeline import FastSegmenter
from glus.inference.results import CollectSink, KeyFrameChoice
from glus.model.checkpoint import from_pretrained
from glus.tokenizer import GLUSTokenizer


def _segment(segmenter: FastSegmenter, frames: list[np.ndarray], expressions: list[str]) -> np.ndarray:
    sink = CollectSink(len(frames), len(expressions))
    segmenter.segment(FrameStore(frames), expressions, [None] * len(expressions), sink)
    return np.stack([sink.result(i, e, KeyFrameChoice(None)).masks for i, e in enumerate(expressions)])


def test_one_segmenter_two_videos_at_once(official_tiny) -> None:
    model = from_pretrained(official_tiny, vision_tower=official_tiny / "clip",
                            sam2_config=official_tiny / "sam2_tiny.yaml")
    tokenizer = GLUSTokenizer.from_pretrained(official_tiny)
    videos = [list(make_video(seed, num_frames=5, height=48, width=64, num_objects=2).frames) for seed in (4, 5)]
    expressions = [["the red circle"], ["the blue square", "the thing on the left"]]
    alone = [_segment(FastSegmenter(model, tokenizer), v, e) for v, e in zip(videos, expressions)]
    assert alone[0].shape[:2] == (1, 5) and alone[1].shape[:2] == (2, 5)

    shared = FastSegmenter(model, tokenizer, max_batch=1)
    before = dict(vars(shared))
    results: dict[int, np.ndarray] = {}
    torch_threads = torch.get_num_threads()

    def run(k: int) -> None:
        results[k] = _segment(shared, videos[k], expressions[k])

    threads = [threading.Thread(target=run, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.get_num_threads() == torch_threads
    for k in (0, 1):
        np.testing.assert_array_equal(results[k], alone[k])
    # sequentially, reusing the same segmenter, in the other order
    np.testing.assert_array_equal(_segment(shared, videos[1], expressions[1]), alone[1])
    np.testing.assert_array_equal(_segment(shared, videos[0], expressions[0]), alone[0])
    assert vars(shared).keys() == before.keys()  # no per-video attribute was added
