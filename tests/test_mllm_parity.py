"""Parity of the multimodal LLM with the authors' code on the tiny reference checkpoint
(tests/fixtures/reference/official_tiny).

For every step of every recorded run the prompt ids and frames of the official inference go through our CLIP ->
pool -> projector -> LLaMA -> text_hidden_fcs path; the generated token, the expanded length, the logits / hidden
sums and the [SEG] embedding must equal the records.
"""

from __future__ import annotations


import cv2
import numpy as np
import pytest
import torch

from glus.config import glus_7b, tiny
from glus.model.checkpoint_io import is_non_weight_buffer_key
from glus.model.mllm import GLUSMLLM, build_mllm
from glus.model.vision_tower import clip_image_processor, clip_pixel_values, load_vision_tower

from conftest import OFFICIAL_TINY

REF = OFFICIAL_TINY



@pytest.fixture(scope="module")
def llm_state_dict() -> dict[str, torch.Tensor]:
    full = torch.load(REF / "pytorch_model.bin", map_location="cpu", weights_only=True)
    return {
        k: v for k, v in full.items() if not k.startswith("model.visual_model.") and not is_non_weight_buffer_key(k)
    }


@pytest.fixture(scope="module")
def mllm(llm_state_dict) -> GLUSMLLM:
    model = GLUSMLLM(tiny(), load_vision_tower(REF / "clip"))
    model.load_state_dict(llm_state_dict, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def frame_pixels(reference) -> torch.Tensor:
    """``[T, 3, 224, 224]`` CLIP pixels of the reference frames, read as the official code reads them."""
    frames = []
    for rec in reference["frames"]:
        bgr = cv2.imread(str(REF / rec["png"]))
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return clip_pixel_values(frames, clip_image_processor(REF / "clip"))


def test_checkpoint_keys_drop_only_inv_freq(llm_state_dict):
    full = torch.load(REF / "pytorch_model.bin", map_location="cpu", weights_only=True)
    dropped = [k for k in full if not k.startswith("model.visual_model.") and k not in llm_state_dict]
    assert dropped == [f"model.layers.{i}.self_attn.rotary_emb.inv_freq" for i in range(2)]


def test_clip_pixel_values_match_official(reference, frame_pixels):
    assert frame_pixels.shape == (len(reference["frames"]), 3, 224, 224)
    for rec, pix in zip(reference["frames"], frame_pixels):
        assert list(pix.shape) == rec["clip_pixel_values_shape"]
        # The record is a float32 sum (its rounding depends on the thread count, up to ~0.008 here); one grey
        # level more at one input pixel moves the exact sum by ~0.09, so 0.02 on the float64 sum tells them apart.
        assert float(pix.double().sum()) == pytest.approx(rec["clip_pixel_values_sum"], abs=0.02)


def _steps(reference):
    for run in reference["runs"]:
        for expr in run["expressions"]:
            for p in expr["passes"]:
                for step in p["steps"]:
                    yield run["run"], p, step


def _check_run_steps(model: GLUSMLLM, reference: dict, frame_embeds: torch.Tensor, runs: set[str]) -> int:
    checked = 0
    for run_name, p, step in _steps(reference):
        if run_name not in runs:
            continue
        # The official image list: the pass's context frames, then the query frames of the prompt, in order.
        frames = list(p["context_frames"]) + list(step["question_frames_in_prompt"])
        ids = step["input_ids"]
        assert ids.count(model.config.image_token_index) == len(frames)
        inputs = model.build_inputs_embeds([ids], frame_embeds[frames])
        lm = step["lm_last"]
        assert int(inputs.lengths[0]) == lm["expanded_seq_len"], (run_name, step["step"])

        out = model.forward_llm(inputs.inputs_embeds, inputs.attention_mask)
        nxt = model.generate_one_token(inputs)
        where = f"{run_name} step {step['step']}"
        assert int(nxt.token_ids[0]) == step["generated_token_id"], where
        assert float(nxt.logits[0, 700]) == pytest.approx(lm["seg_logit"], abs=1e-3), where
        others = torch.cat([nxt.logits[0, :700], nxt.logits[0, 701:]])
        assert float(others.max()) == pytest.approx(lm["max_other_logit"], abs=1e-3), where
        assert float(nxt.hidden.sum()) == pytest.approx(lm["last_hidden_sum"], abs=1e-3), where
        assert float(out.hidden_states.sum()) == pytest.approx(lm["hidden_states_sum"], rel=1e-5, abs=1e-2), where
        torch.testing.assert_close(out.logits[0, -1], nxt.logits[0], rtol=1e-6, atol=1e-5)
        if step["seg_generated"]:
            ref = torch.tensor(step["seg_embedding"])
            assert (nxt.seg_embedding[0] - ref).abs().max() <= 1e-4, where
        checked += 1
    return checked


def test_rigged_runs_match_official(reference, mllm, frame_pixels):
    with torch.no_grad():
        embeds = mllm.encode_frames_for_llm(frame_pixels)
        n = _check_run_steps(mllm, reference, embeds, {"rigged_no_kf", "rigged_kf4"})
    assert n == 20 + 22


def test_unrigged_runs_match_official(reference, llm_state_dict, frame_pixels):
    state = dict(llm_state_dict)
    lm_head = state["lm_head.weight"].clone()
    lm_head[reference["rigging"]["row"]] = torch.tensor(reference["rigging"]["unrigged_row"])
    state["lm_head.weight"] = lm_head
    model = GLUSMLLM(tiny(), load_vision_tower(REF / "clip"))
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.no_grad():
        embeds = model.encode_frames_for_llm(frame_pixels)
        n = _check_run_steps(model, reference, embeds, {"unrigged_no_kf", "unrigged_kf4"})
    assert n == 20 + 22
    tokens = {s["generated_token_id"] for r, _, s in _steps(reference) if r.startswith("unrigged")}
    assert tokens == {194}


def test_glus_7b_layout_on_meta_device():
    """At full size (on the meta device: nothing allocated) the keys and shapes equal the released layout."""
    model = build_mllm(glus_7b(), device="meta")
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = {
        "model.embed_tokens.weight": (32004, 4096),
        "model.norm.weight": (4096,),
        "lm_head.weight": (32004, 4096),
        "model.mm_projector.weight": (4096, 1024),
        "model.mm_projector.bias": (4096,),
        "model.text_hidden_fcs.0.0.weight": (4096, 4096),
        "model.text_hidden_fcs.0.0.bias": (4096,),
        "model.text_hidden_fcs.0.2.weight": (256, 4096),
        "model.text_hidden_fcs.0.2.bias": (256,),
    }
    for i in range(32):
        pre = f"model.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            expected[f"{pre}self_attn.{proj}.weight"] = (4096, 4096)
        expected[f"{pre}mlp.gate_proj.weight"] = (11008, 4096)
        expected[f"{pre}mlp.up_proj.weight"] = (11008, 4096)
        expected[f"{pre}mlp.down_proj.weight"] = (4096, 11008)
        expected[f"{pre}input_layernorm.weight"] = (4096,)
        expected[f"{pre}post_attention_layernorm.weight"] = (4096,)
    assert shapes == expected
    assert model.tokens_per_frame == 64
    # LLaMA-7B (6,738,415,616) + 4 added token rows in embed_tokens and lm_head + projector + seg head.
    llama_7b, added_rows = 6_738_415_616, 2 * 4 * 4096
    projector, seg_head = 1024 * 4096 + 4096, (4096 * 4096 + 4096) + (4096 * 256 + 256)
    assert sum(int(np.prod(s)) for s in shapes.values()) == llama_7b + added_rows + projector + seg_head
