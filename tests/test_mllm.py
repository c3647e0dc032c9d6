"""Unit tests of the multimodal LLM (glus.model.mllm, glus.model.vision_tower) at the tiny size, on CPU."""

from __future__ import annotations


import numpy as np
import pytest
import torch
from torch import nn

from glus.config import tiny
from glus.errors import GLUSError
from glus.model.adapters import apply_lora, lora_target_names, merge_lora, set_trainable_parameters
from glus.model.checkpoint_io import is_non_weight_buffer_key, non_weight_buffer_keys
from glus.model.mllm import GLUSMLLM, build_mllm
from glus.model.quantize import quantize_llm, replace_decoder_linears_with_bnb
from glus.prompts import IGNORE_INDEX, seg_prediction_positions
from glus.model.vision_tower import build_vision_tower, clip_pixel_values, load_vision_tower

from conftest import OFFICIAL_TINY

IMG = -200


@pytest.fixture(scope="module")
def model() -> GLUSMLLM:
    torch.manual_seed(0)
    cfg = tiny()
    m = GLUSMLLM(cfg, build_vision_tower(cfg.vision))
    # Random init leaves norms at 1 and biases at 0; perturb everything so a swapped tensor would show.
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


def _images(n: int, model: GLUSMLLM, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, model.tokens_per_frame, model.config.text.hidden_size, generator=g)


# ---------------------------------------------------------------- layout
def test_state_dict_layout_matches_released_tiny_checkpoint(model):
    keys_txt = OFFICIAL_TINY / "keys.txt"
    released = {}
    for line in keys_txt.read_text().splitlines():
        if line.startswith("#"):
            continue
        key, shape, _ = line.split("\t")
        released[key] = tuple(int(x) for x in shape.strip("[]").split(",") if x.strip())
    llm_part = {k: s for k, s in released.items() if not k.startswith("model.visual_model.")}
    llm_part = {k: s for k, s in llm_part.items() if not is_non_weight_buffer_key(k)}
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == llm_part


def test_vision_tower_outside_state_dict_but_follows_to():
    cfg = tiny()
    m = GLUSMLLM(cfg, build_vision_tower(cfg.vision))
    assert not any("clip" in k or "vision" in k for k in m.state_dict())
    assert not any(p is q for p in m.parameters() for q in m.vision_tower.parameters())
    m.to(torch.bfloat16)
    assert m.vision_tower.dtype == torch.bfloat16 and m.lm_head.weight.dtype == torch.bfloat16
    m.train()
    assert m.training and not m.vision_tower.training  # the frozen tower stays in eval mode
    assert not any(p.requires_grad for p in m.vision_tower.parameters())


def test_attach_visual_model_gives_released_prefix():
    m = GLUSMLLM(tiny())
    sam = nn.Module()
    sam.no_mem_embed = nn.Parameter(torch.zeros(1, 1, 32))
    m.attach_visual_model(sam)
    assert m.visual_model is sam
    assert "model.visual_model.no_mem_embed" in m.state_dict()


def test_non_weight_buffer_keys():
    keys = [
        "model.layers.0.self_attn.rotary_emb.inv_freq",
        "model.layers.31.self_attn.rotary_emb.inv_freq",
        "model.layers.0.self_attn.q_proj.weight",
        "model.visual_model.maskmem_tpos_enc",
        "model.rotary_emb.inv_freq_extra",
    ]
    assert non_weight_buffer_keys(keys) == keys[:2]
    assert not is_non_weight_buffer_key("lm_head.weight")


# ---------------------------------------------------------------- frames -> embeddings
def test_encode_frames_is_clip_layer_pool_projector(model):
    g = torch.Generator().manual_seed(3)
    pixels = torch.randn(3, 3, 224, 224, generator=g)
    with torch.no_grad():
        got = model.encode_frames_for_llm(pixels)
        hidden = model.vision_tower.clip(pixels, output_hidden_states=True).hidden_states
        patches = hidden[-2][:, 1:]  # layer -2, CLS dropped: [3, 256, 32]
        pooled = patches.reshape(3, 64, 4, -1).mean(2)  # 4 consecutive raster tokens per output token
        want = pooled @ model.mm_projector.weight.T + model.mm_projector.bias
        single = model.encode_frames_for_llm(pixels[1:2])
    assert got.shape == (3, model.tokens_per_frame, model.config.text.hidden_size)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(single[0], got[1], rtol=1e-5, atol=1e-5)  # frames are independent: cacheable


def test_clip_pixel_values_shape_and_validation():
    rgb = np.random.default_rng(0).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    px = clip_pixel_values([rgb, rgb[:, :50]])
    assert px.shape == (2, 3, 224, 224) and px.dtype == torch.float32
    assert torch.equal(clip_pixel_values(rgb)[0], px[0])
    with pytest.raises(ValueError, match="uint8"):
        clip_pixel_values(rgb.astype(np.float32))


def test_load_vision_tower_missing_folder_is_user_error(tmp_path):
    with pytest.raises(GLUSError, match="not found"):
        load_vision_tower(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GLUSError, match="cannot load"):
        load_vision_tower(tmp_path / "empty")


def test_build_inputs_embeds_expands_images_and_pads(model):
    t = model.tokens_per_frame
    images = _images(3, model)
    ids = [[1, 10, IMG, 11, IMG, 12], [1, IMG, 13]]
    labels = [[-100, -100, -100, 11, -100, 12], [-100, -100, 13]]
    with torch.no_grad():
        out = model.build_inputs_embeds(ids, images, labels=labels)
        table = model.model.embed_tokens.weight
    lengths = [6 + 2 * (t - 1), 3 + (t - 1)]
    assert out.lengths.tolist() == lengths
    assert out.inputs_embeds.shape == (2, lengths[0], table.shape[1])
    assert out.attention_mask.sum(1).tolist() == lengths
    assert out.token_positions.tolist() == [
        [0, 1, 2, 2 + t, 3 + t, 3 + 2 * t],
        [0, 1, 1 + t, -1, -1, -1],
    ]
    e = out.inputs_embeds
    torch.testing.assert_close(e[0, 2 : 2 + t], images[0])
    torch.testing.assert_close(e[0, 3 + t : 3 + 2 * t], images[1])
    torch.testing.assert_close(e[1, 1 : 1 + t], images[2])
    for b, row in enumerate(ids):
        for j, tok in enumerate(row):
            if tok != IMG:
                torch.testing.assert_close(e[b, out.token_positions[b, j]], table[tok])
    assert torch.all(e[1, lengths[1] :] == 0)
    lab = out.labels
    assert lab[0, 2 + t].item() == 11 and lab[0, 3 + 2 * t].item() == 12 and lab[1, 1 + t].item() == 13
    assert int((lab != IGNORE_INDEX).sum()) == 3
    # A [B, L] tensor gives the same result as the list form for equal-length rows.
    same = model.build_inputs_embeds(torch.tensor([ids[0]]), images[:2])
    torch.testing.assert_close(same.inputs_embeds[0], e[0])


def test_positions_predicting_seg_follow_image_expansion(model):
    t, seg = model.tokens_per_frame, 700
    # Two turns, each "<im_start><image><im_end> q ASSISTANT [SEG] ." after 2 context images.
    ids = [[1, 701, IMG, 702, 701, IMG, 702, 701, IMG, 702, 9, 8, seg, 3, 2, 701, IMG, 702, 9, 8, seg, 3]]
    out = model.build_inputs_embeds(ids, _images(4, model))
    pos = seg_prediction_positions(ids[0], seg, t)  # the one rule, which the training forward uses
    # The released training code: index j of [SEG] in ids[1:], shifted by (t - 1) per image before it.
    want = [(12 - 1) + 3 * (t - 1), (20 - 1) + 4 * (t - 1)]
    assert pos == want
    # and it names the positions of the expanded sequence the model builds: [SEG]'s own slot follows each
    seg_slots = out.token_positions[0, torch.tensor([12, 20])]
    assert (seg_slots - 1).tolist() == want
    with pytest.raises(ValueError, match="position 0"):
        seg_prediction_positions([seg, 1], seg, t)


def test_build_inputs_embeds_rejects_wrong_image_count(model):
    with pytest.raises(ValueError, match="2 image placeholders but 1"):
        model.build_inputs_embeds([[1, IMG, IMG]], _images(1, model))
    with pytest.raises(ValueError, match="same shape"):
        model.build_inputs_embeds([[1, 2]], [], labels=[[1]])


def test_build_inputs_embeds_keeps_projector_gradient(model):
    pixels = torch.randn(1, 3, 224, 224)
    emb = model.encode_frames_for_llm(pixels)
    out = model.build_inputs_embeds([[1, IMG, 5]], emb)
    model.forward_llm(out.inputs_embeds, out.attention_mask).hidden_states.sum().backward()
    assert model.mm_projector.weight.grad is not None and model.mm_projector.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


# ---------------------------------------------------------------- LLM, cache, one token
def _prompt_rows(model):
    """An expression-independent prefix (system + 4 context frames) and two continuations of different lengths."""
    prefix = [1, 20, 21, 22] + [701, IMG, 702] * 4 + [30, 31]
    conts = [[701, IMG, 702, 40, 41, 42, 43, 2, 44], [701, IMG, 702, 50, 51]]
    return prefix, conts


def test_prefix_cache_then_continuations_equals_full_forward(model):
    prefix_ids, conts = _prompt_rows(model)
    ctx, query = _images(4, model, seed=5), _images(2, model, seed=6)
    with torch.no_grad():
        full = [
            model.forward_llm(*_embed(model, [prefix_ids + c], torch.cat([ctx, query[i : i + 1]])))
            for i, c in enumerate(conts)
        ]
        prefix = model.prefill(model.build_inputs_embeds([prefix_ids], ctx))
        cont = model.build_inputs_embeds(conts, query)
        out = model.forward_continuation(prefix, cont)
        again = model.forward_continuation(prefix, cont)  # the prefix cache is not consumed
    p = prefix.length
    for b, ref in enumerate(full):
        n = int(cont.lengths[b])
        assert (out.logits[b, :n] - ref.logits[0, p : p + n]).abs().max() <= 1e-5
        assert (out.hidden_states[b, :n] - ref.hidden_states[0, p : p + n]).abs().max() <= 1e-5
        assert (prefix.hidden_states[0] - ref.hidden_states[0, :p]).abs().max() <= 1e-5
    torch.testing.assert_close(again.logits, out.logits, rtol=0, atol=0)
    assert prefix.cache.get_seq_length() == p


def _embed(model, ids, images):
    e = model.build_inputs_embeds(ids, images)
    return e.inputs_embeds, e.attention_mask


def test_generate_one_token_is_argmax_at_last_position(model):
    prefix_ids, conts = _prompt_rows(model)
    ctx, query = _images(4, model, seed=5), _images(2, model, seed=6)
    with torch.no_grad():
        rows = [prefix_ids + c for c in conts]
        imgs = torch.cat([ctx, query[:1], ctx, query[1:]])
        batch = model.build_inputs_embeds(rows, imgs)
        nxt = model.generate_one_token(batch)
        cached = model.generate_one_token(
            model.build_inputs_embeds(conts, query), prefix=model.prefill(model.build_inputs_embeds([prefix_ids], ctx))
        )
        for b, row in enumerate(rows):
            single = model.build_inputs_embeds([row], imgs[5 * b : 5 * b + 5])
            ref = model.forward_llm(single.inputs_embeds, single.attention_mask)
            assert int(nxt.token_ids[b]) == int(ref.logits[0, -1].argmax())
            torch.testing.assert_close(nxt.hidden[b], ref.hidden_states[0, -1], rtol=1e-5, atol=1e-5)
            fc1, fc2 = model.text_hidden_fcs[0][0], model.text_hidden_fcs[0][2]
            want = fc2(torch.relu(fc1(ref.hidden_states[0, -1])))
            torch.testing.assert_close(nxt.seg_embedding[b], want, rtol=1e-5, atol=1e-5)
    assert nxt.seg_embedding.shape == (2, model.config.prompt_dim)
    assert torch.equal(cached.token_ids, nxt.token_ids)
    torch.testing.assert_close(cached.seg_embedding, nxt.seg_embedding, rtol=1e-5, atol=1e-5)


def test_prefill_rejects_batches(model):
    e = model.build_inputs_embeds([[1, 2, 3], [1, 2]], [])
    with pytest.raises(ValueError, match="single unpadded row"):
        model.prefill(e)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_forward(dtype):
    torch.manual_seed(0)
    cfg = tiny()
    m = GLUSMLLM(cfg, build_vision_tower(cfg.vision)).eval()
    pixels = torch.randn(2, 3, 224, 224)
    ids = [[1, 5, IMG, 6, IMG, 7]]
    with torch.no_grad():
        ref = m.generate_one_token(m.build_inputs_embeds(ids, m.encode_frames_for_llm(pixels)))
        m.to(dtype)
        emb = m.encode_frames_for_llm(pixels)
        got = m.generate_one_token(m.build_inputs_embeds(ids, emb))
    assert emb.dtype == dtype and got.hidden.dtype == dtype and got.seg_embedding.dtype == dtype
    torch.testing.assert_close(got.seg_embedding.float(), ref.seg_embedding, rtol=0.05, atol=0.05)


def test_build_mllm_on_meta_then_assign_load_reproduces(model):
    meta = build_mllm(tiny(), device="meta")
    assert meta.lm_head.weight.is_meta
    meta.load_state_dict(model.state_dict(), assign=True)
    meta.materialize_rotary("cpu")
    meta.set_vision_tower(model.vision_tower)
    meta.eval()
    ids = [[1, 4, IMG, 9]]
    with torch.no_grad():
        img = _images(1, model)
        a = model.generate_one_token(model.build_inputs_embeds(ids, img))
        b = meta.generate_one_token(meta.build_inputs_embeds(ids, img))
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=0)
    assert build_mllm(tiny(), dtype=torch.bfloat16).lm_head.weight.dtype == torch.bfloat16
    assert torch.get_default_dtype() == torch.float32


# ---------------------------------------------------------------- training support
def _with_fake_sam(m: GLUSMLLM) -> GLUSMLLM:
    sam = nn.Module()
    sam.sam_mask_decoder = nn.Module()
    sam.sam_mask_decoder.attn = nn.Module()
    sam.sam_mask_decoder.attn.q_proj = nn.Linear(8, 8)  # same leaf name as LLaMA's: LoRA must not touch it
    sam.sam_mask_decoder.attn.v_proj = nn.Linear(8, 8)
    sam.image_encoder = nn.Linear(8, 8)
    m.attach_visual_model(sam)
    return m


def test_lora_targets_only_llm_q_v_and_trainable_set():
    torch.manual_seed(0)
    m = _with_fake_sam(GLUSMLLM(tiny()))
    keys_before = set(m.state_dict())
    peft_model = apply_lora(m)
    lora_modules = {n.split(".lora_A")[0] for n, _ in peft_model.named_parameters() if ".lora_A." in n}
    assert lora_modules == {
        f"base_model.model.model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")
    }
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("lora_B" in n for n in trainable)
    for must in ("lm_head", "embed_tokens", "mm_projector", "text_hidden_fcs", "sam_mask_decoder.attn.q_proj"):
        assert any(must in n for n in trainable), must
    for frozen in ("image_encoder", "mlp.gate_proj", "q_proj.base_layer", "model.norm", "input_layernorm"):
        assert not any(frozen in n for n in trainable), frozen
    nested = nn.Module()
    nested.mllm = _with_fake_sam(GLUSMLLM(tiny()))  # a wrapper holding the MLLM one level down
    assert lora_target_names(nested) == sorted(
        f"mllm.model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "v_proj")
    )
    with pytest.raises(ValueError, match="no LLaMA decoder linear named o_proj2"):
        apply_lora(GLUSMLLM(tiny()), target_modules=("o_proj2",))
    r = peft_model.peft_config["default"]
    assert (r.r, r.lora_alpha, r.lora_dropout) == (8, 16, 0.05)
    # Attribute access reaches the wrapped GLUSMLLM.
    assert peft_model.tokens_per_frame == m.tokens_per_frame
    # Merge: a trained (non-zero) adapter gives the same outputs merged and unmerged, and the released keys.
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    peft_model.eval()
    ids = [[1, 5, IMG, 6]]
    with torch.no_grad():
        img = torch.randn(1, m.tokens_per_frame, m.config.text.hidden_size)
        e = m.build_inputs_embeds(ids, img)
        unmerged = peft_model(e.inputs_embeds, e.attention_mask).logits
        merged_model = merge_lora(peft_model)
        merged = merged_model.forward_llm(e.inputs_embeds, e.attention_mask).logits
        base = GLUSMLLM(tiny())
        base.load_state_dict({k: v for k, v in merged_model.state_dict().items() if "visual_model" not in k})
    assert isinstance(merged_model, GLUSMLLM)
    assert set(merged_model.state_dict()) == keys_before
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)


def test_set_trainable_parameters_freezes_the_rest():
    m = _with_fake_sam(GLUSMLLM(tiny()))
    names = set_trainable_parameters(m)
    assert "lm_head.weight" in names and "model.embed_tokens.weight" in names
    assert "model.visual_model.sam_mask_decoder.attn.q_proj.weight" in names
    assert "model.layers.0.self_attn.q_proj.weight" not in names
    assert not m.model.visual_model.image_encoder.weight.requires_grad
    only_projector = set(set_trainable_parameters(m, ("mm_projector",)))
    assert only_projector == {"model.mm_projector.weight", "model.mm_projector.bias"}


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    m = GLUSMLLM(tiny())
    m.train()
    img = torch.randn(1, m.tokens_per_frame, m.config.text.hidden_size)

    def grads():
        m.zero_grad(set_to_none=True)
        e = m.build_inputs_embeds([[1, 5, IMG, 6, 7]], img)
        out = m.forward_llm(e.inputs_embeds, e.attention_mask)
        (out.logits.square().mean() + m.seg_embedding(out.hidden_states).sum()).backward()
        return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}

    plain = grads()
    m.gradient_checkpointing_enable()
    assert m.is_gradient_checkpointing
    ckpt = grads()
    m.gradient_checkpointing_disable()
    assert not m.is_gradient_checkpointing
    assert plain.keys() == ckpt.keys() and "model.layers.0.self_attn.q_proj.weight" in plain
    for n in plain:
        torch.testing.assert_close(ckpt[n], plain[n], rtol=1e-5, atol=1e-6)


def test_quantize_needs_cuda_with_clear_error():
    m = GLUSMLLM(tiny())
    with pytest.raises(GLUSError, match="4-bit loading needs a CUDA GPU"):
        quantize_llm(m, 4, device="cpu")
    with pytest.raises(GLUSError, match="must be 4 or 8"):
        quantize_llm(m, 3)
    if not torch.cuda.is_available():
        with pytest.raises(GLUSError, match="8-bit loading needs a CUDA GPU"):
            quantize_llm(m, 8)
    assert isinstance(m.model.layers[0].self_attn.q_proj, nn.Linear)  # nothing half-converted


@pytest.mark.parametrize("bits", [4, 8])
def test_bnb_conversion_keeps_outputs_close(bits):
    """The layer swap behind quantize_llm, quantised on CPU (bitsandbytes >= 0.46 has CPU kernels)."""
    bnb = pytest.importorskip("bitsandbytes")
    torch.manual_seed(0)
    m = GLUSMLLM(tiny()).eval()
    e = m.build_inputs_embeds([[1, 5, IMG, 6]], torch.randn(1, m.tokens_per_frame, m.config.text.hidden_size))
    with torch.no_grad():
        ref = m.forward_llm(e.inputs_embeds, e.attention_mask).hidden_states
        names = replace_decoder_linears_with_bnb(m, bits, torch.float32)
        m.to("cpu")  # moving quantises
        got = m.forward_llm(e.inputs_embeds, e.attention_mask).hidden_states
    assert len(names) == 2 * 7 and "model.layers.1.mlp.down_proj" in names
    kind = bnb.nn.Linear4bit if bits == 4 else bnb.nn.Linear8bitLt
    assert isinstance(m.model.layers[0].self_attn.q_proj, kind) and isinstance(m.model.layers[1].mlp.up_proj, kind)
    assert type(m.lm_head) is nn.Linear and type(m.mm_projector) is nn.Linear
    assert type(m.text_hidden_fcs[0][0]) is nn.Linear
    assert m.model.layers[0].self_attn.q_proj.weight.dtype in (torch.uint8, torch.int8)
    assert (got - ref).abs().max() < 0.15 * ref.abs().max()  # measured: 4-bit 0.07, 8-bit 0.006


def test_clip_preprocess_resize_keeps_the_whole_frame() -> None:
    """A tower with preprocess "resize" sees a 3:2 frame whole (a stripe at its left edge reaches the pixel values);
    "crop", LLaVA's, cuts the sides off at any tower size; a 224 "crop" tower is OpenAI's own pre-processing."""
    from dataclasses import replace

    from transformers import CLIPImageProcessorPil

    from glus.config import VisionConfig
    from glus.model.vision_tower import clip_image_processor

    frame = np.zeros((64, 96, 3), np.uint8)
    frame[:, :8] = (255, 0, 0)  # a red stripe along the left edge
    vision = VisionConfig(image_size=112, patch_size=14)
    resized = clip_pixel_values(frame, clip_image_processor(None, replace(vision, preprocess="resize")))
    cropped = clip_pixel_values(frame, clip_image_processor(None, vision))
    assert resized.shape == cropped.shape == (1, 3, 112, 112)
    red = resized[0, 0] - resized[0, 0, 0, -1]  # the red channel against black: high on the stripe only
    assert float(red[:, :4].min()) > 3 and float(red[:, 20:].abs().max()) < 1e-4
    assert float((cropped[0, 0] - cropped[0, 0, 0, -1]).abs().max()) < 1e-4  # the stripe was cut away
    openai = clip_pixel_values(frame, CLIPImageProcessorPil())
    torch.testing.assert_close(clip_pixel_values(frame, clip_image_processor(None, VisionConfig())), openai)
    with pytest.raises(ValueError, match="preprocess"):
        VisionConfig(preprocess="squash")


def test_small_grid_preset_sees_where_each_token_is() -> None:
    """small-grid's tower: 112 px whole frames, 8 x 8 patches, neighbours pooled in pairs: 32 tokens, whose column a
    linear probe reads (the scaled position embeddings); in small's tower it cannot."""
    from dataclasses import replace

    from glus.config import small, small_grid
    from glus.model.vision_tower import clip_image_processor

    cfg = small_grid()
    assert cfg.vision.num_patches == 64 and cfg.image_tokens_per_frame == 32
    tower = build_vision_tower(cfg.vision)
    pixels = clip_pixel_values(np.zeros((64, 96, 3), np.uint8), clip_image_processor(None, cfg.vision))
    assert tuple(tower(pixels).shape) == (1, 64, cfg.vision.hidden_size)
    base = build_vision_tower(replace(cfg.vision, random_position_scale=1.0))
    scaled = tower.clip.embeddings.position_embedding.weight
    unscaled = base.clip.embeddings.position_embedding.weight
    assert float(scaled.std()) == pytest.approx(5 * float(unscaled.std()), rel=0.1)
    # A token's column from its features, on synthetic clips' frames: a least-squares probe, fitted on half the
    # frames and scored on the rest, explains most of the column's variance.
    from glus.data.synthetic import make_video

    frames = [f for seed in range(5) for f in make_video(seed, num_frames=8, height=64, width=96).frames]

    def column_r2(cfg, columns: int) -> float:
        torch.manual_seed(0)
        tower = build_vision_tower(cfg.vision)
        with torch.no_grad():
            feats = tower(clip_pixel_values(frames, clip_image_processor(None, cfg.vision)))
            pooled = torch.nn.functional.avg_pool1d(feats.transpose(1, 2), cfg.pool_kernel).transpose(1, 2)
        x = np.c_[pooled.reshape(-1, pooled.shape[-1]).numpy(), np.ones(pooled.shape[0] * pooled.shape[1])]
        column = np.tile(np.arange(pooled.shape[1]) % columns, pooled.shape[0]).astype(float)
        half = len(x) // 2
        fit = np.linalg.lstsq(x[:half], column[:half], rcond=None)[0]
        return 1 - ((x[half:] @ fit - column[half:]) ** 2).sum() / ((column[half:] - column[half:].mean()) ** 2).sum()

    assert column_r2(cfg, 4) > 0.7 and column_r2(small(), 2) < 0.5
