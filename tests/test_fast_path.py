"""The fast path gives the same masks as the reference protocol (several videos and expressions, both KFS directions).

The model is the authors' tiny checkpoint with its ``[SEG]`` row of ``lm_head`` re-rigged so that some frames say
``[SEG]`` and others do not: that exercises the failure path (blank mask, no memory, "[SEG] ." answers), memory
banks with gaps, and batches whose rows take different branches.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glus.data.synthetic import make_video
from glus.inference.frames import FrameStore
from glus.inference.pipeline import GLUSPipeline
from glus.inference.results import CollectSink
from glus.data.video import open_video
from glus.model.checkpoint import from_pretrained
from glus.tokenizer import GLUSTokenizer

EXPRESSIONS = ["the red circle moving right", "The blue square.", "a thing on the left that moves"]


def _mixed_seg(model, pipe: GLUSPipeline, frames: list[np.ndarray]) -> None:
    """Set the [SEG] row so its logit ~ the best other logit + c * (a direction along which hidden states vary)."""
    hidden = []
    original = model.generate_one_token

    def capture(*args, **kwargs):
        out = original(*args, **kwargs)
        hidden.append(out.hidden.detach().clone())
        return out

    model.generate_one_token = capture
    try:
        pipe(frames, EXPRESSIONS, None)
    finally:
        del model.generate_one_token
    h = torch.cat(hidden)
    mu = h.mean(0)
    direction = torch.linalg.svd(h - mu, full_matrices=False).Vh[0]
    direction = direction - (direction @ mu) / (mu @ mu) * mu
    seg = pipe.tokenizer.seg_token_id
    with torch.no_grad():
        logits = model.lm_head(h)
        logits[:, seg] = -torch.inf
        best_other = logits.max(1).values.mean()
        scale = 3.0 * best_other.abs().clamp(min=1) / ((h - mu) @ direction).abs().mean()
        model.lm_head.weight[seg] = best_other * mu / (mu @ mu) + scale * direction


@pytest.fixture(scope="module")
def pipe(official_tiny):
    model = from_pretrained(official_tiny, vision_tower=official_tiny / "clip",
                            sam2_config=official_tiny / "sam2_tiny.yaml")
    pipe = GLUSPipeline(model, GLUSTokenizer.from_pretrained(official_tiny), max_batch=2, progress=False)
    _mixed_seg(model, pipe, list(make_video(3, num_frames=9, height=48, width=80, num_objects=2).frames))
    return pipe


@pytest.mark.parametrize("video", ["official", "synthetic"])
def test_fast_equals_reference(pipe, official_tiny, video):
    if video == "official":
        frames = FrameStore(open_video(official_tiny / "frames"))
    else:
        frames = FrameStore(list(make_video(11, num_frames=6, height=40, width=56, num_objects=3).frames))
    keys = [None, 3, "auto"]  # one forward pass; forward + backward from frame 3; the built-in selector
    fast = pipe(frames, EXPRESSIONS, keys, mode="fast")
    ref = pipe(frames, EXPRESSIONS, keys, mode="reference")
    said = np.stack([r.seg_generated for r in ref])
    assert said.any() and not said.all(), "the rigging must make some frames fail"
    for f, r in zip(fast, ref):
        assert f.key_frame == r.key_frame
        np.testing.assert_array_equal(f.seg_generated, r.seg_generated)
        np.testing.assert_array_equal(f.masks, r.masks)
        np.testing.assert_allclose(f.scores, r.scores, rtol=1e-4, atol=1e-5)
    assert fast[1].key_frame == 3 and fast[0].key_frame is None
    assert any(r.masks.any() for r in ref)


def test_streaming_sink_gets_every_frame_once(pipe):
    frames = FrameStore(list(make_video(5, num_frames=6, height=32, width=48).frames))

    class CountingSink(CollectSink):
        def put(self, e, t, p):
            assert (e, t) not in self.predictions, "a frame was emitted twice"
            super().put(e, t, p)

    sink = CountingSink(len(frames), 2)
    choices = pipe(frames, EXPRESSIONS[:2], [4, "auto"], sink=sink)
    assert len(sink.predictions) == 2 * len(frames)
    # Not the masks (they went to the sink) but where each expression's passes started
    kept = pipe(frames, EXPRESSIONS[:2], [4, "auto"])
    assert [c.key_frame for c in choices] == [r.key_frame for r in kept] and choices[0].key_frame == 4
    assert choices[0].first_pass_scores is None and choices[1].first_pass_scores.shape == (len(frames),)
    np.testing.assert_array_equal(choices[1].first_pass_scores, kept[1].first_pass_scores)
    ref = pipe(frames, EXPRESSIONS[:2], [4, "auto"], mode="reference", sink=CollectSink(len(frames), 2))
    assert [c.key_frame for c in ref] == [c.key_frame for c in choices]
