"""The fast path: the released protocol for all expressions of a video at once, with identical masks.

What it shares, compared with :mod:`glus.inference.protocol` (which recomputes everything per expression and
frame):

* **Frame features once per video and sweep.** Expressions advance in lock-step over the frames of a *sweep*
  (all forward passes together, then all backward passes); each frame's CLIP embedding and SAM-2 features are
  computed once per sweep and shared by every expression that visits it.
* **Prompt prefix through a KV cache.** Every prompt of a video starts with the same system text and context
  frames; that prefix runs once per video. At each frame, the longest run of tokens and images that all active
  prompts still share (the first window frame, the question up to the expression) extends it once more. Only
  the rest runs per expression, batched.
* **Streaming.** Frames are read on demand from a :class:`~glus.inference.frames.FrameStore`; only the
  context frames and the last ``query_frames`` frames' embeddings are kept, and predictions go to a
  :class:`~glus.inference.results.MaskSink` as they are made, so memory does not grow with the video's length.

The key-frame protocol is the same as the reference path's: passes from :func:`plan_passes`, the backward pass
owning frames ``<= k``, and ``key_frame="auto"`` running a first forward pass whose frame scores pick ``k``.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from glus.data.masks import decode_rle, encode_rle
from glus.data.sampling import inference_context_frames, query_window
from glus.inference.frames import FrameStore
from glus.inference.keyframes import (HEURISTIC, TRAINED, KeyFrame, Pass, merge_passes, parse_key_frame, plan_passes,
                                     score_first_pass, select_key_frame)
from glus.inference.protocol import blank_prediction
from glus.inference.results import CollectSink, ExpressionResult, FramePrediction, KeyFrameChoice, MaskSink
from glus.model.key_frame_scorer import FirstPassRecord, FrameSummary, KeyFrameScorer
from glus.model.memory_bank import MemoryBank
from glus.model.mllm import PrefixCache
from glus.prompts import InferenceConversation, PromptBuilder, tokenizer_image_token

logger = logging.getLogger(__name__)

# An item of a prompt signature: a token id, or ("img", frame index) for an <image> placeholder.
_Item = int | tuple[str, int]


class _FirstPassFrame(NamedTuple):
    """A first-pass prediction kept until the key frame is chosen: the mask as RLE (it is final only if the selector
    picks frame 0) and what the scorer reads of it."""

    rle: dict
    summary: FrameSummary

    @classmethod
    def keep(cls, pred: FramePrediction) -> "_FirstPassFrame":
        return cls(encode_rle(pred.mask), FrameSummary.of(pred))

    def prediction(self) -> FramePrediction:
        s = self.summary
        return FramePrediction(decode_rle(self.rle), s.seg_generated, s.iou, s.object_score, s.embedding)


@dataclass
class _Track:
    """One expression in one pass: its conversation and memory bank (state owned here, not by the model)."""

    index: int
    frames: tuple[int, ...]
    conversation: InferenceConversation
    emit: Callable[[int, FramePrediction], None]
    bank: MemoryBank = field(default_factory=MemoryBank)

    def __post_init__(self) -> None:
        self.step_of = {frame: step for step, frame in enumerate(self.frames)}


@dataclass
class VideoSession:
    """What :meth:`FastSegmenter.segment` holds for one video while it runs (the segmenter itself holds none, so
    one segmenter serves several videos, as sam2's ``inference_state``).

    Attributes:
        frames: the video.
        context: the context frame indices (:func:`glus.data.sampling.inference_context_frames`).
        context_embeds: ``[K, tokens_per_frame, H]`` their LLM image embeddings.
        video_prefix: the prompt prefix every prompt of the video shares and its KV cache (built on first use).
    """

    frames: FrameStore
    context: list[int]
    context_embeds: torch.Tensor
    video_prefix: tuple[tuple[_Item, ...], PrefixCache] | None = None


class FastSegmenter:
    """Segments all expressions of one video (see the module docstring).

    Args:
        model: a :class:`glus.model.glus.GLUSModel` in eval mode.
        tokenizer: its :class:`glus.tokenizer.GLUSTokenizer`.
        max_batch: most prompts per LLM call.
        progress: show a progress bar per sweep.
        scorer: the trained key-frame scorer that scores ``"auto"``'s first pass (``None``: the heuristic).
    """

    def __init__(self, model, tokenizer, max_batch: int = 16, progress: bool = False,
                 scorer: KeyFrameScorer | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = model.config
        self.builder = PromptBuilder.from_config(model.config)
        self.max_batch = max_batch
        self.progress = progress
        self.scorer = scorer

    # ------------------------------------------------------------------ public
    @torch.inference_mode()
    def segment(self, frames: FrameStore, expressions: Sequence[str], key_frames: Sequence[KeyFrame],
                sink: MaskSink) -> list[KeyFrameChoice]:
        """Predict every frame of every expression into ``sink``.

        Returns:
            per expression: the key frame used (``None`` for one forward pass) and, for ``"auto"``, the first
            pass's frame scores ``[T]`` and what scored them.
        """
        num_frames = len(frames)
        if len(key_frames) != len(expressions):
            raise ValueError("one key-frame setting per expression")
        context = inference_context_frames(num_frames, self.config.context_frames)
        session = VideoSession(frames, context, self.model.clip_embed_frames([frames[i] for i in context]))

        keys: list[int | None] = [None if k in (None, "auto") else int(k) for k in key_frames]
        first_scores: list[np.ndarray | None] = [None] * len(expressions)
        selectors: list[str | None] = [None] * len(expressions)
        auto = [i for i, k in enumerate(key_frames) if k == "auto"]
        pending = [i for i in range(len(expressions)) if i not in auto]
        if auto:
            stored: dict[int, list] = {i: [None] * num_frames for i in auto}

            def keep(i: int) -> Callable[[int, FramePrediction], None]:
                def put(frame: int, pred: FramePrediction) -> None:
                    stored[i][frame] = _FirstPassFrame.keep(pred)
                return put

            first = plan_passes(num_frames, None)[0]
            self._sweep(session, [self._track(i, expressions[i], first, keep(i)) for i in auto], "first pass")
            for i in auto:
                record = FirstPassRecord.from_predictions([f.summary for f in stored[i]], self.config.prompt_dim)
                first_scores[i], selectors[i] = score_first_pass(record, self.scorer)
                keys[i] = select_key_frame(first_scores[i])
                if keys[i] == 0:  # the first pass is already the answer
                    for frame, kept in enumerate(stored[i]):
                        sink.put(i, frame, kept.prediction())
                else:
                    pending.append(i)
                del stored[i]

        forward, backward = [], []
        for i in sorted(pending):
            passes = plan_passes(num_frames, keys[i])
            owner = merge_passes(passes, num_frames)[:, 0]  # which pass's mask is final for each frame
            for p_idx, q in enumerate(passes):
                track = self._track(i, expressions[i], q, self._emitter(sink, i, owner, p_idx))
                (forward if q.direction == "forward" else backward).append(track)
        self._sweep(session, forward, "forward")
        self._sweep(session, backward, "backward")
        return [KeyFrameChoice(keys[i] or None, first_scores[i], selectors[i]) for i in range(len(expressions))]

    # ------------------------------------------------------------------ passes
    def _track(self, index: int, expression: str, p: Pass, emit: Callable[[int, FramePrediction], None]) -> _Track:
        return _Track(index, p.frames, InferenceConversation(self.builder, expression), emit)

    @staticmethod
    def _emitter(sink: MaskSink, index: int, owner: np.ndarray, p_idx: int) -> Callable[[int, FramePrediction], None]:
        def emit(frame: int, pred: FramePrediction) -> None:
            if owner[frame] == p_idx:  # the key frame's mask comes from the backward pass, as released
                sink.put(index, frame, pred)
        return emit

    def _sweep(self, session: VideoSession, tracks: list[_Track], name: str) -> None:
        """Advance ``tracks`` frame by frame over the union of their passes (contiguous, one direction)."""
        if not tracks:
            return
        seen: set[int] = set()
        for t in tracks:
            seen.update(t.frames)
        backward = tracks[0].frames[0] > tracks[0].frames[-1]
        frames_in_order = sorted(seen, reverse=backward)
        window_embeds: deque[tuple[int, torch.Tensor]] = deque(maxlen=self.config.query_frames)
        bar = tqdm(frames_in_order, desc=name, unit="frame", disable=not self.progress, leave=False)
        for frame in bar:
            window_embeds.append((frame, self.model.clip_embed_frames([session.frames[frame]])[0]))
            active = [t for t in tracks if frame in t.step_of]
            if active:
                self._advance(session, frame, active, dict(window_embeds))
        bar.close()

    def _advance(self, session: VideoSession, frame: int, tracks: list[_Track],
                 embeds: dict[int, torch.Tensor]) -> None:
        """One query frame for every active track: one token each, then the masks of those that said [SEG]."""
        q = self.config.query_frames
        rows: list[tuple[list[int], list[int]]] = []
        steps = []
        for t in tracks:
            step = t.step_of[frame]
            window = [t.frames[s] for s in query_window(step, q)]
            ids = tokenizer_image_token(t.conversation.prompt(), self.tokenizer, self.builder.image_token,
                                        self.builder.image_token_index)
            rows.append((ids, [*range(-len(session.context), 0), *window]))  # negative = context slot
            steps.append(step)
        token_ids, seg_embeddings = self._generate(session, rows, embeds)
        seg_id = self.tokenizer.seg_token_id
        said_seg = [i for i, tok in enumerate(token_ids) if tok == seg_id]
        predictions: dict[int, FramePrediction] = {}
        if said_seg:
            sam_frame = self.model.sam_encode_frame(session.frames[frame])
            preds = self.model.sam_decode(sam_frame, seg_embeddings[said_seg], [tracks[i].bank for i in said_seg],
                                          [steps[i] for i in said_seg], self.config.mem_stride_infer)
            prompts = seg_embeddings[said_seg].float().cpu().numpy()  # one host copy: the key-frame scorer's input
            predictions = {i: FramePrediction(p.mask, True, p.iou, p.object_score, prompts[j])
                           for j, (i, p) in enumerate(zip(said_seg, preds))}
        for i, t in enumerate(tracks):
            pred = predictions.get(i) or blank_prediction(session.frames.size)
            t.conversation.record(i in predictions)
            t.emit(frame, pred)

    # ------------------------------------------------------------------ LLM with shared prefixes
    def _signature(self, ids: list[int], images: list[int]) -> tuple[_Item, ...]:
        marker = self.builder.image_token_index
        it = iter(images)
        return tuple(("img", next(it)) if tok == marker else tok for tok in ids)

    def _embed(self, session: VideoSession, rows: Sequence[Sequence[_Item]], embeds: dict[int, torch.Tensor]):
        """Embed prompt rows given as signatures (images from the context or the window embeddings)."""
        marker = self.builder.image_token_index
        ids_rows, images = [], []
        for row in rows:
            ids = []
            for item in row:
                if isinstance(item, tuple):
                    ids.append(marker)
                    slot = item[1]
                    images.append(session.context_embeds[len(session.context) + slot] if slot < 0 else embeds[slot])
                else:
                    ids.append(item)
            ids_rows.append(ids)
        return self.model.build_inputs_embeds(ids_rows, images)

    def _prefix(self, session: VideoSession, signatures: list[tuple[_Item, ...]],
                embeds: dict[int, torch.Tensor]) -> tuple[int, PrefixCache]:
        """The cached prefix for these prompts: the video prefix, extended by what they all share now."""
        if session.video_prefix is None:
            # Everything before the first query image is the same for every prompt of the video.
            first = signatures[0]
            images_seen, cut = 0, len(first)
            for pos, item in enumerate(first):
                if isinstance(item, tuple):
                    images_seen += 1
                    if images_seen == len(session.context) + 1:
                        cut = pos
                        break
            video_items = first[:cut]
            session.video_prefix = (video_items, self.model.prefill(self._embed(session, [video_items], embeds)))
        video_items, video_cache = session.video_prefix
        n = len(video_items)
        if any(sig[:n] != video_items for sig in signatures):
            raise RuntimeError("a prompt does not start with the video's shared prefix")
        # Longest common run after the video prefix; every row keeps at least one item of its own.
        limit = min(len(sig) for sig in signatures) - 1
        shared = n
        while shared < limit and all(sig[shared] == signatures[0][shared] for sig in signatures):
            shared += 1
        if shared == n:
            return n, video_cache
        ext = self._embed(session, [signatures[0][n:shared]], embeds)
        out = self.model.forward_continuation(video_cache, ext, compute_logits=False)
        return shared, PrefixCache(cache=out.past_key_values, length=video_cache.length + int(ext.lengths[0]),
                                   hidden_states=out.hidden_states)

    def _generate(self, session: VideoSession, rows: list[tuple[list[int], list[int]]],
                  embeds: dict[int, torch.Tensor]) -> tuple[list[int], torch.Tensor]:
        """Greedy next token and ``[SEG]`` embedding of every prompt (``[N]`` ids, ``[N, prompt_dim]``)."""
        signatures = [self._signature(ids, images) for ids, images in rows]
        token_ids: list[int] = []
        seg_embeddings = []
        for start in range(0, len(signatures), self.max_batch):
            chunk = signatures[start:start + self.max_batch]
            shared, prefix = self._prefix(session, chunk, embeds)
            inputs = self._embed(session, [sig[shared:] for sig in chunk], embeds)
            nxt = self.model.generate_one_token(inputs, prefix=prefix)
            token_ids.extend(nxt.token_ids.tolist())  # the one host sync per frame: [SEG] or not decides the branch
            seg_embeddings.append(nxt.seg_embedding)
        return token_ids, torch.cat(seg_embeddings)


def segment_video(model, tokenizer, frames: FrameStore, expressions: Sequence[str],
                  key_frames: KeyFrame | Sequence[KeyFrame] = None, *, sink: MaskSink | None = None,
                  max_batch: int = 16, progress: bool = False, scorer: KeyFrameScorer | None = None
                  ) -> list[ExpressionResult] | list[KeyFrameChoice]:
    """Fast-path segmentation of ``expressions`` on one video.

    With ``sink=None`` the masks are collected and returned as :class:`ExpressionResult` objects; with a sink
    (e.g. a PNG writer) nothing is kept in memory and each expression's :class:`KeyFrameChoice` is returned.
    ``scorer``: the trained key-frame scorer for ``"auto"`` (``None``: the heuristic).
    """
    keys = list(key_frames) if isinstance(key_frames, (list, tuple)) else [key_frames] * len(expressions)
    collect = CollectSink(len(frames), len(expressions)) if sink is None else None
    choices = FastSegmenter(model, tokenizer, max_batch=max_batch, progress=progress, scorer=scorer).segment(
        frames, expressions, keys, sink if sink is not None else collect)
    if collect is None:
        return choices
    return [collect.result(i, text, choice) for i, (text, choice) in enumerate(zip(expressions, choices))]


class GLUSPipeline:
    """Referring video object segmentation with a GLUS model: a video and expressions in, masks out.

    Example::

        pipe = GLUSPipeline.from_pretrained("Swindl/GLUS-A", device="cuda", dtype="bf16")
        results = pipe("video.mp4", ["the dog running left", "the person on the right"], key_frame="auto")
        results[0].masks  # [T, H, W] bool

    Args:
        model: a :class:`~glus.model.glus.GLUSModel`; tokenizer: its :class:`~glus.tokenizer.GLUSTokenizer`.
        max_batch: most prompts per LLM call on the fast path.
        progress: show progress bars.
        key_frame_scorer: the trained scorer of ``key_frame="auto"``'s first pass (``None``: the heuristic,
            :func:`glus.inference.keyframes.frame_quality`).
    """

    def __init__(self, model, tokenizer, *, max_batch: int = 16, progress: bool = True,
                 key_frame_scorer: KeyFrameScorer | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self.progress = progress
        self.key_frame_scorer = key_frame_scorer

    @property
    def key_frame_selector(self) -> str:
        """What scores ``key_frame="auto"``'s first pass: ``"trained"`` or ``"heuristic"``."""
        return TRAINED if self.key_frame_scorer is not None else HEURISTIC

    @classmethod
    def from_pretrained(cls, path_or_id, *, vision_tower=None, sam2_config=None, compat=None,
                        device: str | torch.device = "cpu", dtype: str | torch.dtype = "fp32",
                        load_in_bits: int | None = None, key_frame_scorer: str | None = "auto",
                        **kwargs) -> "GLUSPipeline":
        """Load model, tokenizer (:func:`glus.model.checkpoint.from_pretrained`) and key-frame scorer; ``kwargs`` go
        to the pipeline.

        ``key_frame_scorer``: ``"auto"`` (the checkpoint's trained scorer where it has one, else the heuristic),
        ``"trained"`` (the checkpoint's, or an error), ``"heuristic"``, or a folder holding a scorer
        (:func:`glus.model.key_frame_scorer.key_frame_scorer_for`).
        """
        from glus.model.checkpoint import from_pretrained
        from glus.model.checkpoint_io import resolve_checkpoint
        from glus.model.key_frame_scorer import check_scorer_choice, key_frame_scorer_for
        from glus.tokenizer import GLUSTokenizer

        check_scorer_choice(key_frame_scorer)  # before the model loads
        model = from_pretrained(path_or_id, vision_tower=vision_tower, sam2_config=sam2_config, compat=compat,
                                device=device, dtype=dtype, load_in_bits=load_in_bits)
        folder = resolve_checkpoint(path_or_id)
        tokenizer = GLUSTokenizer.from_pretrained(folder)
        scorer = key_frame_scorer_for(folder, key_frame_scorer, model.device)
        return cls(model, tokenizer, key_frame_scorer=scorer, **kwargs)

    def check_expressions(self, expressions: Sequence[str]) -> None:
        """One-line errors for expressions the model cannot take: what
        :meth:`glus.prompts.PromptBuilder.check_expression` refuses (empty, not text, holding one of the model's own
        tokens), or too long for its context window.

        The longest prompt holds the context frames and ``query_frames`` turns, each repeating the expression;
        it must fit the LLM's ``max_position_embeddings``.
        """
        from glus.errors import GLUSError
        from glus.prompts import expanded_length

        if not expressions:
            raise GLUSError("no expression given")
        builder = PromptBuilder.from_config(self.model.config)
        limit = self.model.config.text.max_position_embeddings
        for i, text in enumerate(expressions):
            builder.check_expression(i, text, self.tokenizer)
            past = [builder.inference_answer(True)] * (builder.query_frames - 1)
            ids = tokenizer_image_token(builder.inference_prompt(text, past), self.tokenizer, builder.image_token,
                                        builder.image_token_index)
            length = expanded_length(ids, self.model.tokens_per_frame, builder.image_token_index)
            if length > limit:
                raise GLUSError(f"expression {i} is too long: its prompt needs {length} positions, the model has "
                                f"{limit} ({len(text)} characters; shorten it)")

    def __call__(self, video, expressions: str | Sequence[str], key_frame: KeyFrame | Sequence[KeyFrame] = None,
                 *, mode: str = "fast", sink: MaskSink | None = None
                 ) -> list[ExpressionResult] | list[KeyFrameChoice]:
        """Segment ``expressions`` on ``video``.

        Args:
            video: a video file / frame folder / image list path, a :class:`~glus.data.video.VideoSource`, a
                :class:`FrameStore` or a list of ``(H, W, 3)`` uint8 RGB arrays.
            expressions: one text or several.
            key_frame: ``None`` / ``"none"`` (one forward pass), ``"auto"`` (built-in selector), a frame index, or
                one such value per expression.
            mode: ``"fast"`` (default) or ``"reference"`` (the released per-frame protocol; identical masks).
            sink: stream predictions there instead of returning them; then each expression's
                :class:`KeyFrameChoice` is returned.
        """
        from glus.errors import GLUSError
        from glus.inference.protocol import segment_reference

        texts = [expressions] if isinstance(expressions, str) else list(expressions)
        self.check_expressions(texts)
        keys = list(key_frame) if isinstance(key_frame, (list, tuple)) else [key_frame] * len(texts)
        keys = [parse_key_frame(k) for k in keys]
        frames, owned = _as_frame_store(video)
        try:
            for k in keys:
                if isinstance(k, int) and k >= len(frames):
                    raise GLUSError(f"key frame {k} outside the video's frames 0..{len(frames) - 1}")
            if mode == "fast":
                return segment_video(self.model, self.tokenizer, frames, texts, keys, sink=sink,
                                     max_batch=self.max_batch, progress=self.progress, scorer=self.key_frame_scorer)
            if mode != "reference":
                raise GLUSError(f"unknown mode {mode!r}; choose fast or reference")
            results = [segment_reference(self.model, self.tokenizer, frames, text, k, sink=sink, expression_index=i,
                                         scorer=self.key_frame_scorer)
                       for i, (text, k) in enumerate(zip(texts, keys))]
            if sink is not None:
                return [KeyFrameChoice(r.key_frame, r.first_pass_scores, r.key_frame_selector) for r in results]
            return results
        finally:
            if owned:
                frames.close()


def _as_frame_store(video) -> tuple[FrameStore, bool]:
    """A :class:`FrameStore` for any accepted video input, and whether this call owns (must close) it."""
    from pathlib import Path

    from glus.data.video import VideoSource, open_video

    if isinstance(video, FrameStore):
        return video, False
    if isinstance(video, (str, Path)):
        return FrameStore(open_video(video)), True
    if isinstance(video, VideoSource):
        return FrameStore(video), True
    return FrameStore(list(video)), True
