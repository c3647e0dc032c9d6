"""The reference path: the released per-frame protocol (spec section 4), one expression at a time.

This is the specification in code, kept deliberately plain: for every query frame it encodes all the frames of
the prompt again, runs the whole prompt through the LLM, generates one token and, on ``[SEG]``, decodes the mask
with the pass's memory bank (stride ``config.mem_stride_infer``). The fast path (:mod:`glus.inference.pipeline`)
must give identical masks; a test holds them equal.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from glus.data.sampling import inference_context_frames, query_window
from glus.inference.frames import FrameStore
from glus.inference.keyframes import Pass, plan_passes, score_first_pass, select_key_frame
from glus.inference.results import CollectSink, ExpressionResult, FramePrediction, KeyFrameChoice, MaskSink
from glus.model.key_frame_scorer import FirstPassRecord, KeyFrameScorer
from glus.model.memory_bank import MemoryBank
from glus.prompts import InferenceConversation, PromptBuilder, build_input_ids


def blank_prediction(size: tuple[int, int]) -> FramePrediction:
    """The official failure path: no ``[SEG]`` -> an empty mask, no SAM-2 call, no memory."""
    return FramePrediction(mask=np.zeros(size, dtype=bool), seg_generated=False)


@torch.inference_mode()
def run_pass_reference(model, tokenizer, frames: FrameStore, expression: str, p: Pass,
                       context: Sequence[int]) -> list[FramePrediction]:
    """One pass of the official loop for one expression; returns the prediction of every frame of ``p``."""
    config = model.config
    builder = PromptBuilder.from_config(config)
    conversation = InferenceConversation(builder, expression)
    bank = MemoryBank()  # cleared at the first query frame of every pass
    stride = config.mem_stride_infer
    out: list[FramePrediction] = []
    for step, frame in enumerate(p.frames):
        window = [p.frames[s] for s in query_window(step, config.query_frames)]
        images = model.clip_embed_frames([frames[i] for i in (*context, *window)])
        ids = build_input_ids(conversation.prompt(), tokenizer, builder)
        token = model.generate_one_token(model.build_inputs_embeds([ids], images))
        seg = int(token.token_ids[0]) == tokenizer.seg_token_id
        if seg:
            sam_frame = model.sam_encode_frame(frames[frame])
            (pred,) = model.sam_decode(sam_frame, token.seg_embedding, [bank], [step], stride)
            out.append(FramePrediction(pred.mask, True, pred.iou, pred.object_score,
                                       token.seg_embedding[0].float().cpu().numpy()))
        else:
            out.append(blank_prediction(frames.size))
        conversation.record(seg)
    return out


def segment_reference(model, tokenizer, frames: FrameStore, expression: str,
                      key_frame: int | str | None = None, sink: MaskSink | None = None,
                      expression_index: int = 0, scorer: KeyFrameScorer | None = None) -> ExpressionResult:
    """Segment one expression with the reference protocol.

    Args:
        key_frame: ``None`` (one forward pass), a frame index (forward from it, then backward), or ``"auto"``
            (first forward pass, best frame by :func:`glus.inference.keyframes.score_first_pass`, then the two
            passes).
        sink: also receives every final prediction.
        scorer: the trained key-frame scorer for ``"auto"`` (``None``: the heuristic).
    """
    num_frames = len(frames)
    context = inference_context_frames(num_frames, model.config.context_frames)
    first_scores, selector = None, None
    collected = CollectSink(num_frames, expression_index + 1)
    if key_frame == "auto":
        first = run_pass_reference(model, tokenizer, frames, expression, plan_passes(num_frames, None)[0], context)
        record = FirstPassRecord.from_predictions(first, model.config.prompt_dim)
        first_scores, selector = score_first_pass(record, scorer)
        key_frame = select_key_frame(first_scores)
        passes = plan_passes(num_frames, key_frame)
        results = [first] if key_frame == 0 else [run_pass_reference(model, tokenizer, frames, expression, q, context)
                                                  for q in passes]
    else:
        passes = plan_passes(num_frames, key_frame)
        results = [run_pass_reference(model, tokenizer, frames, expression, q, context) for q in passes]
    for q, preds in zip(passes, results):  # later passes overwrite earlier ones (the backward pass owns <= k)
        for frame, pred in zip(q.frames, preds):
            collected.put(expression_index, frame, pred)
    for frame in range(num_frames):
        if sink is not None:
            sink.put(expression_index, frame, collected.predictions[(expression_index, frame)])
    return collected.result(expression_index, expression, KeyFrameChoice(key_frame or None, first_scores, selector))
