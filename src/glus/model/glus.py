"""The GLUS model: the multimodal LLM with SAM-2 attached as ``model.visual_model``.

:class:`GLUSModel` adds to :class:`~glus.model.mllm.GLUSMLLM` the whole SAM-2 (:class:`~glus.model.sam2_model.Sam2Model`:
image encoder, memory attention and encoder, prompt encoder, mask decoder) and the building blocks inference composes (each usable on its own, so features can be cached per frame):

* :meth:`GLUSModel.clip_embed_frames`: RGB frames -> LLM image embeddings ``[N, 64, H]``;
* :meth:`GLUSModel.sam_encode_frame`: one RGB frame -> SAM-2 features (shared by every expression);
* the LLM calls of the parent class (``build_inputs_embeds``, ``prefill``, ``generate_one_token`` ...);
* :meth:`GLUSModel.sam_decode`: ``[SEG]`` embeddings + memory banks -> masks, writing the new memories.

Training: :meth:`GLUSModel.forward_train` computes the named loss terms of spec section 5 for a batch of
:class:`TrainingSample` (CE on the LLM outputs, BCE + Dice on the query-frame masks decoded through the memory
bank with stride 1, and the object contrastive loss).

The state dict is exactly the released checkpoints' layout (``model.*``, ``lm_head.*``,
``model.visual_model.*`` with Meta's SAM-2 names); the CLIP tower is held outside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from glus.config import GLUSConfig
from glus.data.training import TrainingSample
from glus.model.clicks import center_clicks, sample_clicks
from glus.model.losses import (ContrastiveResult, GLUSLossWeights, ObjectContrastiveLoss, SegEntryMeta,
                               combine_losses, mask_losses, object_set_key)
from glus.model.memory_bank import MemoryBank
from glus.model.mllm import GLUSMLLM
from glus.model.sam2_model import Sam2DecodeOutput, Sam2Model, Sam2ImageFeatures
from glus.model.vision_tower import ClipVisionTower, clip_image_processor, clip_pixel_values
from glus.prompts import IGNORE_INDEX, seg_prediction_positions


@dataclass
class SamFrame:
    """SAM-2 features of one frame and the frame's original size ``(H, W)`` (where masks are resized to)."""

    features: Sam2ImageFeatures
    size: tuple[int, int]


@dataclass
class MaskPrediction:
    """One expression's mask on one frame, on the host.

    Attributes:
        mask: ``(H, W)`` bool numpy array (logits > 0 at the original size).
        iou: predicted IoU of the chosen mask token.
        object_score: object-presence logit.
    """

    mask: np.ndarray
    iou: float
    object_score: float


@dataclass
class TrainForward:
    """What one training forward computed.

    Attributes:
        losses: ``{"ce", "bce", "dice", "contrastive", "clicks", "seg_click", "total"}``, weighted
            (:func:`combine_losses`; ``clicks`` the click-prompt term and ``seg_click`` the ``[SEG]``-to-click term,
            each 0 unless it is on).
        seg_embeddings: per sample, ``[E, Q, prompt_dim]`` the ``[SEG]`` prompts (expression, query frame).
        mask_logits: per sample, ``[E, Q, H, W]`` the predicted logits at the frames' original size.
        contrastive: the contrastive loss's result (``None`` when the term is off).
    """

    losses: dict[str, torch.Tensor]
    seg_embeddings: list[torch.Tensor]
    mask_logits: list[torch.Tensor]
    contrastive: ContrastiveResult | None = None


class GLUSModel(GLUSMLLM):
    """CLIP + pooling + projector + LLaMA + seg head + SAM-2 (see the module docstring).

    Args:
        config: the whole model's sizes (:class:`GLUSConfig`).
        vision_tower: the frozen CLIP tower (may be attached later with ``set_vision_tower``).
        clip_processor_path: folder or id of a ``preprocessor_config.json`` for CLIP pre-processing
            (default: OpenAI CLIP's settings at the tower's size and ``config.vision.preprocess``; every released
            GLUS model uses OpenAI's own).
    """

    def __init__(self, config: GLUSConfig, vision_tower: ClipVisionTower | None = None,
                 attn_implementation: str = "sdpa", clip_processor_path: str | None = None) -> None:
        super().__init__(config, vision_tower=vision_tower, attn_implementation=attn_implementation)
        self.attach_visual_model(Sam2Model(config.sam2))
        self.clip_processor = clip_image_processor(clip_processor_path, config.vision)
        # The tokenizer's [SEG] id (set by the loader); training needs it to find the [SEG] positions.
        self.seg_token_id: int | None = None

    @property
    def sam2(self) -> Sam2Model:
        return self.model.visual_model

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    # ------------------------------------------------------------------ inference building blocks
    def clip_embed_frames(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """``N`` RGB uint8 frames ``(H, W, 3)`` -> LLM image embeddings ``[N, tokens_per_frame, H]``."""
        if not frames:  # no context frames (the local-only ablation)
            return torch.empty(0, self.tokens_per_frame, self.config.text.hidden_size, device=self.device,
                               dtype=self.dtype)
        pixels = clip_pixel_values(list(frames), self.clip_processor).to(self.device, self.dtype)
        return self.encode_frames_for_llm(pixels)

    def sam_encode_frame(self, frame: np.ndarray) -> SamFrame:
        """SAM-2 features of one RGB uint8 frame ``(H, W, 3)``, computed once and shared by all expressions."""
        sam = self.sam2
        pixels = sam.preprocess(frame).unsqueeze(0).to(self.device, sam.no_mem_embed.dtype)
        return SamFrame(sam.encode_image(pixels), (int(frame.shape[0]), int(frame.shape[1])))

    def sam_decode(self, frame: SamFrame, seg_embeddings: torch.Tensor, banks: Sequence[MemoryBank],
                   steps: Sequence[int], stride: int) -> list[MaskPrediction]:
        """Masks of B ``[SEG]`` embeddings ``[B, prompt_dim]`` on one frame, each with its own bank and step.

        Entries at the same step run together (and those selecting the same memories share one memory-attention
        call inside :meth:`Sam2Model.decode`). New memories are written into the banks under each entry's step.
        """
        out: list[MaskPrediction | None] = [None] * len(banks)
        for step in sorted(set(steps)):
            idx = [i for i, s in enumerate(steps) if s == step]
            res: Sam2DecodeOutput = self.sam2.decode(
                frame.features, seg_embeddings[idx].unsqueeze(1), [banks[i] for i in idx], step, stride, frame.size)
            masks = (res.logits[:, 0] > 0).cpu().numpy()
            ious, scores = res.iou.float().cpu().tolist(), res.object_score.float().cpu().tolist()
            for j, i in enumerate(idx):
                out[i] = MaskPrediction(masks[j], ious[j], scores[j])
        return out  # type: ignore[return-value]

    # ------------------------------------------------------------------ training
    def forward_train(self, samples: Sequence[TrainingSample], contrastive: ObjectContrastiveLoss | None = None,
                      weights: GLUSLossWeights = GLUSLossWeights(), ce_on: str = "seg",
                      memory_grad: bool = False, memory_bank: bool = True,
                      image_grad: bool = False, prompt_grad: bool = True, click_weight: float = 0.0,
                      clicks_only: bool = False, seg_click_weight: float = 0.0) -> dict[str, torch.Tensor]:
        """Named loss terms of one batch (spec section 5): :meth:`forward_train_outputs` without the tensors.

        Returns:
            ``{"ce", "bce", "dice", "contrastive", "clicks", "seg_click", "total"}`` (weighted, as
            :func:`combine_losses`).
        """
        return self.forward_train_outputs(samples, contrastive, weights, ce_on, memory_grad, memory_bank,
                                          image_grad, prompt_grad, click_weight, clicks_only,
                                          seg_click_weight=seg_click_weight).losses

    def forward_train_outputs(self, samples: Sequence[TrainingSample],
                              contrastive: ObjectContrastiveLoss | None = None,
                              weights: GLUSLossWeights = GLUSLossWeights(), ce_on: str = "seg",
                              memory_grad: bool = False, memory_bank: bool = True,
                              image_grad: bool = False, prompt_grad: bool = True, click_weight: float = 0.0,
                              clicks_only: bool = False, seg_click_weight: float = 0.0) -> TrainForward:
        """Loss terms of one batch and what they were computed from (spec section 5).

        Args:
            contrastive: the trainer's contrastive loss (with its FIFO bank); ``None`` turns the term off.
            ce_on: ``"seg"`` (released code: cross-entropy only where the target token is ``[SEG]``) or
                ``"assistant"`` (every assistant token, as the paper describes).
            memory_grad: let gradients flow through the memory attention (released: no).
            memory_bank: condition query frames on the memories of the earlier ones (``False``: every frame is
                decoded on its own, the "no memory bank" ablation).
            image_grad: compute SAM-2's image features with gradients (released: under no_grad), for training the
                image encoder (and the decoder's ``conv_s0/conv_s1``) too.
            prompt_grad: let the mask loss reach the ``[SEG]`` prompts (released: yes). ``False`` stops it there: the
                mask terms train SAM-2 only, the seg head and the language model learn from the cross-entropy and
                contrastive terms (a warm-up for models trained from scratch: SAM-2 learns to decode prompts that
                the contrastive loss keeps apart, before the mask loss may pull them together).
            click_weight: weight of a click-prompt mask loss on the same frames (:mod:`glus.model.clicks`: one click
                on each target mask, decoded without memory, bce and dice with the mask weights); 0: off (released).
            clicks_only: train SAM-2 alone on clicks: the language model does not run (``glus train``'s
                ``click_steps``, SAM-2's own training before the ``[SEG]`` stage); only ``clicks`` and ``total``.
            seg_click_weight: weight of the ``[SEG]``-to-click term (:meth:`seg_click_pairs`: each ``[SEG]``
                prompt of a one-object expression, on a frame where the object is seen, pulled toward SAM-2's
                prompt of a click at the object's centre); 0: off (released).

        Returns:
            :class:`TrainForward`: the weighted terms, per sample the ``[SEG]`` embeddings ``[E, Q, D]`` and mask
            logits ``[E, Q, H, W]``, and the contrastive result.
        """
        if ce_on not in ("seg", "assistant"):
            raise ValueError(f"ce_on must be 'seg' or 'assistant', got {ce_on!r}")
        if clicks_only:
            return self._click_forward(samples, weights, image_grad)
        ce, per_sample_seg = self.seg_prompts_train(samples, ce_on)
        # What prompts SAM-2: the same embeddings, or (prompt_grad off) copies the mask loss cannot trace back past.
        per_sample_prompt = per_sample_seg if prompt_grad else [e.detach() for e in per_sample_seg]
        preds, gts, anchors, metas = [], [], [], []
        click_preds: list[torch.Tensor] = []
        click_gts: list[torch.Tensor] = []
        per_sample_logits = []
        for sample, sample_seg, sample_prompt in zip(samples, per_sample_seg, per_sample_prompt):
            num_expr, num_query = sample.masks.shape[:2]
            size = tuple(sample.masks.shape[-2:])
            features = self.sam2.encode_image(sample.sam_pixels.to(self.device, self.sam2.no_mem_embed.dtype),
                                              grad=image_grad)
            banks = [MemoryBank() for _ in range(num_expr)] if memory_bank else None
            for j in range(num_query):
                res = self.sam2.decode(features.frame(j), sample_prompt[:, j:j + 1], banks, j,
                                       self.config.mem_stride_train, size, memory_grad=memory_grad)
                preds.append(res.logits[:, 0])
                gts.append(sample.masks[:, j].to(res.logits.device, res.logits.dtype))
                if click_weight > 0:
                    self._click_terms(features.frame(j), gts[-1], click_preds, click_gts)
            per_sample_logits.append(torch.stack(preds[-num_query:], dim=1))  # [E, Q, H, W]
            for e in range(num_expr):
                for j in range(num_query):
                    anchors.append(sample_seg[e, j])
                    metas.append(SegEntryMeta(sample.video, sample.expressions[e] if sample.expressions else str(e),
                                              object_set_key(sample.objects[e]) if sample.objects else str(e),
                                              sample.frames[j] if sample.frames else str(j), sample.dataset))
        bce, dice = mask_losses(preds, gts)
        con, result = None, None
        if contrastive is not None and anchors:
            result = contrastive(torch.stack(anchors), metas)
            con = None if result.skipped else result.loss
        losses = combine_losses(ce, bce, dice, con, weights)
        losses["clicks"] = torch.zeros_like(losses["total"])
        if click_preds:
            cb, cd = mask_losses(click_preds, click_gts)
            losses["clicks"] = click_weight * (weights.bce * cb + weights.dice * cd)
            losses["total"] = losses["total"] + losses["clicks"]
        losses["seg_click"] = torch.zeros_like(losses["total"])
        seg_click = self.seg_click_loss(samples, per_sample_seg) if seg_click_weight > 0 else None
        if seg_click is not None:
            losses["seg_click"] = seg_click_weight * seg_click
            losses["total"] = losses["total"] + losses["seg_click"]
        return TrainForward(losses, per_sample_seg, per_sample_logits, result)

    def seg_prompts_train(self, samples: Sequence[TrainingSample],
                          ce_on: str = "seg") -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The language half of a training forward: the cross-entropy and the query frames' ``[SEG]`` prompts.

        Returns:
            ``(ce, prompts)``: ``prompts`` per sample ``[E, Q, prompt_dim]`` (expression, query frame): of each
            conversation's ``[SEG]`` answers, the last ``Q``.
        """
        if self.seg_token_id is None:
            raise ValueError("set model.seg_token_id (the tokenizer's [SEG] id) before training")
        seg_id = int(self.seg_token_id)
        rows, labels, images = [], [], []
        for sample in samples:
            embeds = self.encode_frames_for_llm(sample.clip_pixels.to(self.device, self.dtype))
            for ids, lab in zip(sample.input_ids, sample.labels):
                rows.append(ids)
                labels.append(lab)
                images.extend(embeds)
        inputs = self.build_inputs_embeds(rows, images, labels=labels)
        out = self.forward_llm(inputs.inputs_embeds, inputs.attention_mask)
        ce = self._ce_loss(out.logits, inputs.labels, seg_id if ce_on == "seg" else None)
        seg_positions = [torch.tensor(seg_prediction_positions(ids, seg_id, self.tokens_per_frame,
                                                                self.config.image_token_index), dtype=torch.long)
                         for ids in rows]
        per_sample, row = [], 0
        for sample in samples:
            num_expr, num_query = sample.masks.shape[:2]
            per_sample.append(torch.stack([self.seg_embedding(out.hidden_states[r, seg_positions[r][-num_query:]])
                                           for r in range(row, row + num_expr)]))
            row += num_expr
        return ce, per_sample

    def seg_click_loss(self, samples: Sequence[TrainingSample], prompts: Sequence[torch.Tensor]
                       ) -> torch.Tensor | None:
        """The unweighted ``[SEG]``-to-click term: MSE of every pair of :meth:`seg_click_pairs` over ``samples``
        and their ``prompts [E, Q, D]``; ``None`` when no one-object expression is seen on any frame."""
        pairs = [pair for sample, seg in zip(samples, prompts) for pair in self.seg_click_pairs(sample, seg)]
        if not pairs:
            return None
        got, want = (torch.cat([pair[k] for pair in pairs]).float() for k in (0, 1))
        return F.mse_loss(got, want)

    def seg_click_pairs(self, sample: TrainingSample, seg: torch.Tensor
                        ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]]:
        """The ``[SEG]``-to-click targets of one sample's ``[SEG]`` prompts ``seg [E, Q, D]``, per query frame:
        ``(prompts [N, D], click prompts [N, D], expressions [N], frame)``.

        A decoder that follows clicks reads a click prompt as "the object here"; a ``[SEG]`` prompt equal to the
        click prompt at the referred object's centre (:func:`center_clicks`) is read the same way. So this term
        gives the language model a target for every frame in the decoder's own language, where the mask loss
        alone reaches it only through the decoder. Expressions of several objects (no single centre) and frames
        without the object are left to the mask loss. The click prompts are targets: no gradient flows into them.
        """
        single = torch.tensor([e for e in range(seg.shape[0]) if not sample.objects or len(sample.objects[e]) == 1],
                              dtype=torch.long)
        out = []
        for j in range(seg.shape[1]):
            points, present = center_clicks(sample.masks[single, j], self.sam2.config.image_size)
            if bool(present.any()):
                rows = single[present.cpu()].to(seg.device)
                with torch.no_grad():
                    want = self.sam2.click_prompt(points[present].to(self.device, self.sam2.no_mem_embed.dtype))
                out.append((seg[rows, j], want[:, 0], rows, j))
        return out

    def _click_terms(self, features: Sam2ImageFeatures, targets: torch.Tensor, preds: list[torch.Tensor],
                     gts: list[torch.Tensor]) -> None:
        """Append the click-prompt logits of one frame's target masks ``[E, H, W]`` (those not empty) to ``preds``."""
        points, present = sample_clicks(targets, self.sam2.config.image_size)
        if not bool(present.any()):
            return
        prompts = self.sam2.click_prompt(points[present].to(self.sam2.no_mem_embed.dtype))
        res = self.sam2.decode(features, prompts, None, 0, 1, tuple(targets.shape[-2:]))
        preds.append(res.logits[:, 0])
        gts.append(targets[present])

    def _click_forward(self, samples: Sequence[TrainingSample], weights: GLUSLossWeights,
                       image_grad: bool) -> TrainForward:
        """SAM-2 alone on click prompts (``clicks_only``): every query frame of every sample, no memory."""
        preds: list[torch.Tensor] = []
        gts: list[torch.Tensor] = []
        for sample in samples:
            features = self.sam2.encode_image(sample.sam_pixels.to(self.device, self.sam2.no_mem_embed.dtype),
                                              grad=image_grad)
            for j in range(sample.masks.shape[1]):
                targets = sample.masks[:, j].to(self.device, self.sam2.no_mem_embed.dtype)
                self._click_terms(features.frame(j), targets, preds, gts)
        if not preds:
            raise ValueError("no target mask to click on in this batch")
        cb, cd = mask_losses(preds, gts)
        clicks = weights.bce * cb + weights.dice * cd
        zero = torch.zeros_like(clicks)
        losses = {"ce": zero, "bce": zero, "dice": zero, "contrastive": zero, "clicks": clicks, "seg_click": zero,
                  "total": clicks}
        return TrainForward(losses, [], [], None)

    @staticmethod
    def _ce_loss(logits: torch.Tensor, labels: torch.Tensor, only_token: int | None) -> torch.Tensor:
        """Next-token cross-entropy; with ``only_token``, only where the target is that token (released code)."""
        shift_logits = logits[:, :-1].float()
        shift_labels = labels[:, 1:]
        keep = shift_labels != IGNORE_INDEX
        if only_token is not None:
            keep &= shift_labels == only_token
        if not bool(keep.any()):
            raise ValueError("no target token to train the language model on")
        return F.cross_entropy(shift_logits[keep], shift_labels[keep])
