"""Training forward of the GLUS model (spec section 5) on a fixed batch of synthetic clips.

``GLUSModel.forward_train`` gets :class:`TrainingSample` s built the way the trainer builds them (sampled frames of
a synthetic video, one conversation per expression from :func:`glus.prompts.encode_training_conversation`, union
masks of the expressions' objects). Checked: the named loss terms, their fall over a few AdamW steps on the
trainable set of :func:`glus.model.adapters.set_trainable_parameters`, frozen parts left bit-identical, and the
contrastive term switching on once its bank holds enough negatives. The contrastive loss's own value is checked
against a hand computation in ``test_losses.py``; the memory-frame rule in ``test_memory_bank.py``.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from glus.config import GLUSConfig, tiny
from glus.data.sampling import sample_training_frames
from glus.data.synthetic import make_video
from glus.data.training import TrainingSample
from glus.model.glus import GLUSModel
from glus.model.losses import ContrastiveConfig, GLUSLossWeights, ObjectContrastiveLoss
from glus.model.adapters import TRAINABLE_PATTERNS, set_trainable_parameters
from glus.prompts import IGNORE_INDEX
from glus.model.sam2_model import preprocess_frame
from glus.model.vision_tower import build_vision_tower, clip_pixel_values
from glus.prompts import PromptBuilder, encode_training_conversation
from glus.tokenizer import GLUSTokenizer

from conftest import OFFICIAL_TINY

REF = OFFICIAL_TINY

TERMS = {"ce", "bce", "dice", "contrastive", "clicks", "seg_click", "total"}
# (video seed, expression indices): two phrasings of one object (each other's contrastive positives) and others
BATCH = ((0, (0, 1, 2)), (1, (0, 2, 4)))


def config() -> GLUSConfig:
    """The tiny preset with SAM-2 at 256 px instead of 1024 (a 16x16 feature grid): the same module graph and
    code path, ~16x less image-encoder work, so the few optimiser steps below stay fast on a CPU."""
    cfg = tiny()
    return replace(cfg, sam2=replace(cfg.sam2, image_size=256, mem_attn_rope_feat_sizes=(16, 16)))



@pytest.fixture(scope="module")
def tokenizer() -> GLUSTokenizer:
    return GLUSTokenizer.from_pretrained(REF)  # the tiny LLaMA tokenizer, 703 ids = the tiny preset's vocabulary


def make_model(tokenizer: GLUSTokenizer, seed: int = 0) -> GLUSModel:
    torch.manual_seed(seed)
    cfg = config()
    model = GLUSModel(cfg, vision_tower=build_vision_tower(cfg.vision))
    assert len(tokenizer) == cfg.text.vocab_size
    model.seg_token_id = tokenizer.seg_token_id
    return model


@pytest.fixture(scope="module")
def batch(tokenizer: GLUSTokenizer) -> list[TrainingSample]:
    """Two clips (one per synthetic video), three expressions each, 4 context + 4 query frames."""
    cfg = config()
    builder = PromptBuilder.from_config(cfg)
    rng = np.random.default_rng(0)
    samples = []
    for seed, chosen in BATCH:
        video = make_video(seed, num_frames=12, height=48, width=64, num_objects=3)
        frames = sample_training_frames(video.num_frames, cfg.context_frames, cfg.query_frames, rng)
        exprs = [video.expressions[i] for i in chosen]
        ids, labels = zip(*(encode_training_conversation(builder.sample_training_conversation(e.text, rng),
                                                         tokenizer, builder) for e in exprs))
        sam = torch.stack([preprocess_frame(f, cfg.sam2.image_size) for f in video.frames[list(frames.query)]])
        samples.append(TrainingSample(
            clip_pixels=clip_pixel_values(list(video.frames[list(frames.all)])),
            sam_pixels=sam,
            input_ids=list(ids),
            labels=list(labels),
            masks=torch.from_numpy(np.stack([video.target(e.objects)[list(frames.query)] for e in exprs])).float(),
            video=video.name,
            expressions=[str(i) for i in chosen],
            objects=[e.objects for e in exprs],
            frames=[f"{t:05d}" for t in frames.query],
        ))
    return samples


def test_batch_is_well_formed(batch: list[TrainingSample], tokenizer: GLUSTokenizer) -> None:
    for sample in batch:
        assert sample.clip_pixels.shape == (8, 3, 224, 224) and sample.sam_pixels.shape == (4, 3, 256, 256)
        assert sample.masks.shape == (3, 4, 48, 64) and sample.masks.sum() > 0
        for ids, labels in zip(sample.input_ids, sample.labels):
            assert int((ids == -200).sum()) == 8  # 4 context + 4 query images
            assert int((ids == tokenizer.seg_token_id).sum()) == 4  # one [SEG] answer per query frame
            learned = labels[labels != IGNORE_INDEX]
            assert int((learned == tokenizer.seg_token_id).sum()) == 4 and int((learned == 2).sum()) == 4


def test_loss_terms_are_named_and_finite(batch: list[TrainingSample], tokenizer: GLUSTokenizer) -> None:
    model = make_model(tokenizer).train()
    contrastive = ObjectContrastiveLoss(ContrastiveConfig(num_negatives=4), seed=0)
    out = model.forward_train(batch, contrastive=contrastive)
    assert set(out) == TERMS
    assert all(v.dim() == 0 and math.isfinite(float(v.detach())) for v in out.values())
    assert all(float(out[k].detach()) > 0 for k in TERMS - {"clicks", "seg_click"})
    # the click terms are off unless asked for (the authors' recipe)
    assert float(out["clicks"]) == 0 and float(out["seg_click"]) == 0
    assert torch.allclose(out["total"], out["ce"] + out["bce"] + out["dice"] + out["contrastive"])
    # 2 clips x 3 expressions x 4 query frames [SEG] embeddings went into the bank (all "mevis")
    assert len(contrastive.bank) == 2 * 3 * 4
    # ce_on="assistant" (the paper's reading) learns every answer token, not only [SEG]: another value
    with torch.no_grad():
        seg_only = model.forward_train(batch, ce_on="seg")["ce"]
        assistant = model.forward_train(batch, ce_on="assistant")["ce"]
    assert math.isfinite(float(assistant)) and float(assistant) != float(seg_only)


def test_prompt_grad_off_stops_the_mask_loss_at_the_prompts(batch: list[TrainingSample],
                                                            tokenizer: GLUSTokenizer) -> None:
    """The same losses either way; without it the mask terms train SAM-2, not the seg head or an LLM weight."""
    grads = {}
    for flag in (True, False):
        model = make_model(tokenizer).train()
        losses = model.forward_train(batch, contrastive=None, weights=GLUSLossWeights(ce=0.0), prompt_grad=flag)
        losses["total"].backward()
        grads[flag] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        grads[flag, "total"] = float(losses["total"].detach())
    assert grads[True, "total"] == pytest.approx(grads[False, "total"])
    llm = [n for n in grads[True] if ".layers." in n and "visual_model" not in n]
    assert llm and all(float(grads[True][n].abs().max()) > 0 for n in llm[:3])
    assert not any(n in grads[False] and float(grads[False][n].abs().max()) > 0 for n in llm)
    head = [n for n in grads[True] if "text_hidden_fcs" in n]
    assert head and not any(n in grads[False] and float(grads[False][n].abs().max()) > 0 for n in head)
    decoder = [n for n in grads[True] if "sam_mask_decoder" in n]
    assert decoder and all(torch.allclose(grads[False][n], grads[True][n]) for n in decoder)


def test_training_lowers_the_losses_and_keeps_frozen_parts(batch: list[TrainingSample],
                                                           tokenizer: GLUSTokenizer) -> None:
    model = make_model(tokenizer, seed=1).train()
    trainable = set(set_trainable_parameters(model))
    assert trainable and all(any(p in n for p in TRAINABLE_PATTERNS) for n in trainable)
    assert any("sam_mask_decoder" in n for n in trainable) and "lm_head.weight" in trainable
    frozen_prefixes = ("model.visual_model.image_encoder.", "model.visual_model.memory_attention.",
                       "model.visual_model.memory_encoder.", "model.visual_model.sam_prompt_encoder.",
                       "model.layers.")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clip_before = {k: v.clone() for k, v in model.vision_tower.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3, betas=(0.9, 0.95),
                                  weight_decay=0.0)
    contrastive = ObjectContrastiveLoss(ContrastiveConfig(num_negatives=4), seed=0)
    torch.manual_seed(0)  # memory-attention dropout is active in train mode
    history = []
    for _ in range(6):
        out = model.forward_train(batch, contrastive=contrastive)
        optimizer.zero_grad()
        out["total"].backward()
        frozen_grads = [n for n, p in model.named_parameters() if n not in trainable and p.grad is not None]
        assert frozen_grads == []
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        history.append({k: float(v.detach()) for k, v in out.items()})
    first, last = history[0], history[-1]
    assert last["total"] < 0.9 * first["total"], history
    assert last["ce"] < first["ce"] and last["bce"] + last["dice"] < first["bce"] + first["dice"], history

    after = model.state_dict()
    for key, value in before.items():
        if key.startswith(frozen_prefixes):
            assert torch.equal(after[key], value), key
    assert all(torch.equal(v, clip_before[k]) for k, v in model.vision_tower.state_dict().items())
    # what moved is trainable (state-dict names are Meta's for SAM-2, so match the patterns) and every trained
    # family moved (in train mode the mask decoder's IoU / multimask / object-score heads get no gradient)
    changed = {k for k in before if not torch.equal(after[k], before[k])}
    assert changed and all(any(p in k for p in TRAINABLE_PATTERNS) for k in changed)
    for family in ("lm_head", "embed_tokens", "mm_projector", "text_hidden_fcs", "sam_mask_decoder.transformer",
                   "sam_mask_decoder.output_hypernetworks_mlps", "sam_mask_decoder.output_upscaling"):
        assert any(family in k for k in changed), family


def test_contrastive_term_needs_enough_bank_entries(batch: list[TrainingSample], tokenizer: GLUSTokenizer) -> None:
    model = make_model(tokenizer).eval()  # deterministic: the three calls see the same embeddings
    off = model.forward_train(batch, contrastive=None)
    assert float(off["contrastive"].detach()) == 0.0
    # the released default (128 negatives) cannot be met by one small batch: the term is skipped ...
    starved = ObjectContrastiveLoss(ContrastiveConfig(), seed=0)
    skipped = model.forward_train(batch, contrastive=starved)
    assert float(skipped["contrastive"].detach()) == 0.0 and torch.equal(skipped["total"], off["total"])
    assert len(starved.bank) == 24  # ... but the bank still fills
    # ... while 4 negatives are available at once (other expressions of the batch), so the term is used
    used = model.forward_train(batch, contrastive=ObjectContrastiveLoss(ContrastiveConfig(num_negatives=4), seed=0))
    assert float(used["contrastive"].detach()) > 0
    assert torch.allclose(used["total"], off["total"] + used["contrastive"])
    # and it trains the [SEG] head
    model.zero_grad()
    used["contrastive"].backward()
    grad = model.text_hidden_fcs[0][2].weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0


def test_forward_train_rejects_misuse(batch: list[TrainingSample], tokenizer: GLUSTokenizer) -> None:
    model = make_model(tokenizer)
    with pytest.raises(ValueError, match="ce_on"):
        model.forward_train(batch, ce_on="everything")
    model.seg_token_id = None
    with pytest.raises(ValueError, match="seg_token_id"):
        model.forward_train(batch)


def test_clicks_land_on_each_mask_in_model_pixels() -> None:
    from glus.model.clicks import sample_clicks

    masks = torch.zeros(3, 40, 80)
    masks[0, 10:12, 60:62] = 1  # a 2 x 2 object: every click is inside it
    masks[1, 30:40, 0:5] = 1
    torch.manual_seed(0)
    seen = set()
    for _ in range(20):
        points, present = sample_clicks(masks, 256)
        assert present.tolist() == [True, True, False] and points[2].tolist() == [0.0, 0.0]
        x, y = (int(v) for v in (points[0, 0] * 80 / 256, points[0, 1] * 40 / 256))
        assert masks[0, y, x] == 1
        seen.add((x, y))
        x, y = (int(v) for v in (points[1, 0] * 80 / 256, points[1, 1] * 40 / 256))
        assert masks[1, y, x] == 1
    assert len(seen) == 4  # uniform over the foreground, not one fixed pixel


def test_center_clicks_sit_in_the_middle_of_what_is_seen() -> None:
    """The centre click: a rectangle's centre; inside an L (whose centroid is outside it); inside a shape cut by the
    frame's edge, away from that edge; none on an empty mask; the same every call."""
    from glus.model.clicks import center_clicks

    masks = torch.zeros(4, 40, 80)
    masks[0, 10:21, 30:51] = 1  # 11 x 21 rectangle: centre (40, 15)
    masks[1, 0:30, 0:6] = 1  # an L: a bar down the left side and one along the bottom
    masks[1, 24:30, 0:40] = 1
    masks[3, 0:20, 70:80] = 1  # cut by the right edge and the top
    points, present = center_clicks(masks, 160)  # 160 px model input: x scales by 2, y by 4
    assert present.tolist() == [True, True, False, True] and points[2].tolist() == [0.0, 0.0]
    assert points[0].tolist() == [80.0, 60.0]
    x, y = int(points[1, 0] / 2), int(points[1, 1] / 4)
    assert masks[1, y, x] == 1
    x, y = int(points[3, 0] / 2), int(points[3, 1] / 4)
    assert masks[3, y, x] == 1 and 72 <= x <= 77 and 3 <= y <= 16
    again, _ = center_clicks(masks, 160)
    assert torch.equal(points, again)


def test_click_prompt_is_sam2s_point_embedding(tokenizer: GLUSTokenizer) -> None:
    """The one-token click equals the first token of the prompt encoder's own (padded) point embedding."""
    sam = make_model(tokenizer).sam2
    points = torch.tensor([[10.0, 200.0], [128.0, 3.0]])
    mine = sam.click_prompt(points)
    theirs, _ = sam.sam_prompt_encoder(points[:, None, None], torch.ones(2, 1, 1, dtype=torch.long), None, None)
    assert mine.shape == (2, 1, sam.config.d_model)
    torch.testing.assert_close(mine[:, 0], theirs[:, 0, 0])
    assert not torch.allclose(mine[0], mine[1])


def test_clicks_only_trains_sam2_alone(batch: list[TrainingSample], tokenizer: GLUSTokenizer) -> None:
    model = make_model(tokenizer).train()
    for p in model.parameters():
        p.requires_grad_(True)
    losses = model.forward_train(batch, clicks_only=True, image_grad=True)
    assert set(losses) == TERMS and float(losses["clicks"].detach()) > 0
    assert losses["total"] is losses["clicks"] and float(losses["ce"]) == 0
    losses["total"].backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and float(p.grad.abs().max()) > 0}
    assert any("sam_mask_decoder" in n for n in with_grad) and any("image_encoder" in n for n in with_grad)
    assert any("sam_prompt_encoder" in n for n in with_grad)  # the click embedding learns too
    assert not any(n.startswith(("model.layers.", "lm_head", "model.text_hidden_fcs")) for n in with_grad)


def test_click_weight_adds_a_click_term(batch: list[TrainingSample], tokenizer: GLUSTokenizer) -> None:
    model = make_model(tokenizer).eval()  # no dropout: the clicks' random draws must not change the [SEG] terms
    plain = model.forward_train(batch, contrastive=None)
    with_clicks = model.forward_train(batch, contrastive=None, click_weight=0.5)
    assert float(plain["clicks"]) == 0 and float(with_clicks["clicks"]) > 0
    for key in ("ce", "bce", "dice"):  # the [SEG] terms are untouched
        assert float(with_clicks[key]) == pytest.approx(float(plain[key]), rel=1e-5)
    assert float(with_clicks["total"]) == pytest.approx(float(plain["total"]) + float(with_clicks["clicks"]), rel=1e-5)


def test_seg_click_term_is_the_mse_to_the_center_click(batch: list[TrainingSample], tokenizer: GLUSTokenizer) -> None:
    """seg_click: each one-object [SEG] prompt on a frame showing its object against SAM-2's click prompt at the
    object's centre, computed by hand here; several-object expressions and empty frames are left out; the term adds
    to the total and leaves the other terms alone."""
    from glus.model.clicks import center_clicks

    masks = batch[0].masks.clone()
    masks[0, 1] = 0  # the object of expression 0 is not seen on query frame 1
    objects = [batch[0].objects[0], [*batch[0].objects[1], 99], *batch[0].objects[2:]]  # expression 1: two objects
    batch = [replace(batch[0], masks=masks, objects=objects), *batch[1:]]
    model = make_model(tokenizer).eval()
    plain = model.forward_train_outputs(batch, contrastive=None)
    out = model.forward_train_outputs(batch, contrastive=None, seg_click_weight=2.0)
    got, want, skipped = [], [], 0
    for sample, seg in zip(batch, out.seg_embeddings):
        for e, objects in enumerate(sample.objects):
            for j in range(seg.shape[1]):
                points, present = center_clicks(sample.masks[e, j][None], model.sam2.config.image_size)
                if len(objects) != 1 or not bool(present[0]):
                    skipped += 1
                    continue
                got.append(seg[e, j])
                want.append(model.sam2.click_prompt(points)[0, 0])
    assert len(got) == 2 * 3 * 4 - 4 - 1 and skipped == 5
    expected = 2.0 * torch.nn.functional.mse_loss(torch.stack(got), torch.stack(want))
    assert float(out.losses["seg_click"]) == pytest.approx(float(expected), rel=1e-5)
    for key in ("ce", "bce", "dice"):
        assert float(out.losses[key]) == pytest.approx(float(plain.losses[key]), rel=1e-5)
    assert float(out.losses["total"]) == pytest.approx(float(plain.losses["total"] + out.losses["seg_click"]), rel=1e-5)


def test_seg_click_trains_the_language_side_not_its_target(batch: list[TrainingSample],
                                                           tokenizer: GLUSTokenizer) -> None:
    """The click prompt is a target: the term's gradient reaches the seg head and the LLaMA, never SAM-2."""
    model = make_model(tokenizer).train()
    for p in model.parameters():
        p.requires_grad_(True)
    model.forward_train(batch, contrastive=None, seg_click_weight=1.0)["seg_click"].backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and float(p.grad.abs().max()) > 0}
    assert any(n.startswith("model.text_hidden_fcs") for n in with_grad)
    assert any(n.startswith("model.layers.") for n in with_grad)
    assert not any("visual_model" in n for n in with_grad)
