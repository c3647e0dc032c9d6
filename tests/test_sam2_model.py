"""SAM-2 (Sam2Model): config from Meta's yaml, Meta key layout (tiny and Hiera-L), loading/saving, decode API."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from glus.config import glus_7b, tiny
from glus.errors import GLUSError
from glus.model.memory_bank import MemoryBank
from glus.model.sam2_model import IMAGE_MEAN, IMAGE_STD, Sam2Model, preprocess_frame
from glus.model.sam2_keys import Sam2KeyMap, apply_fuser_gamma_compat
from glus.model.sam2_yaml import sam2_config_from_mapping, sam2_config_from_yaml

from conftest import OFFICIAL_TINY

REF = OFFICIAL_TINY


# ---- expected Meta layout, derived from SAM2Base's architecture ------------------------------------------------
# The state-dict layout (tiny = keys.txt, Hiera-L on the meta device) is checked for the whole GLUS model in
# tests/test_model_layout.py.


# ---- yaml -> Sam2Config ----------------------------------------------------------------------------------------
def test_tiny_yaml_gives_tiny_preset() -> None:
    assert sam2_config_from_yaml(REF / "sam2_tiny.yaml") == tiny().sam2


def _hiera_l_doc() -> dict:
    """Meta's sam2_hiera_l.yaml, written as the tiny yaml (same module graph) with Hiera-L's sizes."""
    doc = yaml.safe_load((REF / "sam2_tiny.yaml").read_text())
    model = doc["model"]
    model["image_encoder"]["trunk"].update(embed_dim=144, num_heads=2, stages=[2, 6, 36, 4],
                                           global_att_blocks=[23, 33, 43])
    neck = model["image_encoder"]["neck"]
    neck.update(d_model=256, backbone_channel_list=[1152, 576, 288, 144])
    neck["position_encoding"]["num_pos_feats"] = 256
    attn = model["memory_attention"]
    attn.update(d_model=256, num_layers=4)
    attn["layer"].update(d_model=256, dim_feedforward=2048)
    for key in ("self_attention", "cross_attention"):
        attn["layer"][key].update(embedding_dim=256, feat_sizes=[32, 32])
    attn["layer"]["cross_attention"]["kv_in_dim"] = 64
    enc = model["memory_encoder"]
    enc["out_dim"] = 64
    enc["position_encoding"]["num_pos_feats"] = 64
    del enc["in_dim"], enc["mask_downsampler"]["embed_dim"]  # Hiera-L's yaml relies on the defaults (256)
    enc["fuser"]["layer"]["dim"] = 256
    return doc


def test_hiera_l_yaml_gives_glus_7b_preset() -> None:
    assert sam2_config_from_mapping(_hiera_l_doc()) == glus_7b().sam2


def test_yaml_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(GLUSError, match="missing.yaml"):
        sam2_config_from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    doc = yaml.safe_load((REF / "sam2_tiny.yaml").read_text())
    doc["model"]["image_encoder"]["neck"]["fpn_interp_model"] = "bilinear"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(GLUSError, match=r"bad\.yaml.*fpn_interp_model"):
        sam2_config_from_yaml(bad)
    doc = yaml.safe_load((REF / "sam2_tiny.yaml").read_text())
    doc["model"]["memory_attention"]["layer"]["cross_attention"]["kv_in_dim"] = 64
    with pytest.raises(GLUSError, match="kv_in_dim"):
        sam2_config_from_mapping(doc, source="x.yaml")
    doc = yaml.safe_load((REF / "sam2_tiny.yaml").read_text())
    doc["model"]["num_maskmem"] = "seven"
    with pytest.raises(GLUSError, match="num_maskmem"):
        sam2_config_from_mapping(doc, source="x.yaml")
    (tmp_path / "broken.yaml").write_text("model: [unclosed")
    with pytest.raises(GLUSError, match="broken.yaml"):
        sam2_config_from_yaml(tmp_path / "broken.yaml")


def test_yaml_reads_string_floats() -> None:
    # PyYAML reads Meta's "1e-6" as a string; the reader converts it.
    doc = yaml.safe_load((REF / "sam2_tiny.yaml").read_text())
    assert doc["model"]["memory_encoder"]["fuser"]["layer"]["layer_scale_init_value"] == "1e-6"
    doc["model"]["memory_encoder"]["fuser"]["layer"]["layer_scale_init_value"] = "2e-6"
    assert sam2_config_from_mapping(doc).fuser_layer_scale_init_value == 2e-6


# ---- loading, saving, key mapping --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def meta_sd() -> dict[str, torch.Tensor]:
    return torch.load(REF / "sam2_tiny.pt", map_location="cpu", weights_only=True)["model"]


def test_load_stored_roundtrips_exactly(meta_sd: dict[str, torch.Tensor]) -> None:
    head = Sam2Model(tiny().sam2)
    report = head.load_meta_state_dict(meta_sd, compat="stored")
    assert report.missing_keys == [] and report.unexpected_keys == [] and report.fuser_gamma_replaced == []
    saved = head.state_dict()
    assert saved.keys() == meta_sd.keys()
    assert all(torch.equal(saved[k], meta_sd[k]) for k in meta_sd)


def test_load_official_keeps_fuser_gamma_at_init(meta_sd: dict[str, torch.Tensor]) -> None:
    head = Sam2Model(tiny().sam2)
    head.load_meta_state_dict(meta_sd, compat="stored")  # a previous load must not leak into "official"
    partial = {k: v for k, v in meta_sd.items() if not k.endswith(".gamma")}
    report = head.load_meta_state_dict(partial, compat="official")
    assert sorted(report.fuser_gamma_replaced) == ["memory_encoder.fuser.layers.0.gamma",
                                                   "memory_encoder.fuser.layers.1.gamma"]
    saved = head.state_dict()
    for key in report.fuser_gamma_replaced:
        assert torch.equal(saved[key], torch.full((32,), 1e-6))
        assert not torch.equal(meta_sd[key], saved[key])  # the file holds other values
    assert all(torch.equal(saved[k], meta_sd[k]) for k in partial)
    with pytest.raises(ValueError):
        apply_fuser_gamma_compat({}, "fixed", 1e-6)  # type: ignore[arg-type]


def test_nested_state_dict_and_reports_use_meta_names(meta_sd: dict[str, torch.Tensor], tmp_path: Path) -> None:
    class Outer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = nn.Module()
            self.model.visual_model = Sam2Model(tiny().sam2)

    outer = Outer()
    full = {f"model.visual_model.{k}": v for k, v in meta_sd.items()}
    assert outer.load_state_dict(full, strict=True)
    assert set(outer.state_dict()) == set(full)
    # safetensors refuses tensors sharing storage: the split point embeddings must be real copies
    save_file(outer.state_dict(), str(tmp_path / "w.safetensors"))
    back = load_file(str(tmp_path / "w.safetensors"))
    assert all(torch.equal(back[k], full[k]) for k in full)

    dropped = dict(full)
    del dropped["model.visual_model.image_encoder.trunk.blocks.0.norm1.weight"]
    del dropped["model.visual_model.sam_prompt_encoder.point_embeddings.2.weight"]
    dropped["model.visual_model.not_a_sam2_key"] = torch.zeros(1)
    result = outer.load_state_dict(dropped, strict=False)
    assert "model.visual_model.image_encoder.trunk.blocks.0.norm1.weight" in result.missing_keys
    assert {f"model.visual_model.sam_prompt_encoder.point_embeddings.{i}.weight" for i in range(4)} <= set(
        result.missing_keys)
    assert "model.visual_model.not_a_sam2_key" in result.unexpected_keys
    assert not any("backbone" in k or "point_embed." in k for k in result.missing_keys)


def test_shape_mismatch_names_the_meta_key(meta_sd: dict[str, torch.Tensor]) -> None:
    bad = dict(meta_sd)
    bad["memory_attention.layers.0.cross_attn_image.k_proj.weight"] = torch.zeros(32, 64)
    with pytest.raises(ValueError, match=r"cross_attn_image\.k_proj\.weight: file \(32, 64\) vs model \(32, 16\)"):
        Sam2Model(tiny().sam2).load_meta_state_dict(bad, compat="stored")


def test_key_map_detects_collisions() -> None:
    with pytest.raises(ValueError, match="collision"):
        Sam2KeyMap(["image_encoder.backbone.pos_embed", "image_encoder.trunk.pos_embed"], num_downsampler_layers=4)


# ---- preprocess, encode, decode ----------------------------------------------------------------------------------
def test_preprocess_frame() -> None:
    frame = np.full((96, 128, 3), 51, dtype=np.uint8)
    x = preprocess_frame(frame, image_size=256)
    assert x.shape == (3, 256, 256) and x.dtype == torch.float32
    expected = (torch.tensor([0.2, 0.2, 0.2]) - torch.tensor(IMAGE_MEAN)) / torch.tensor(IMAGE_STD)
    assert torch.allclose(x, expected.view(3, 1, 1).expand(3, 256, 256), atol=1e-6)
    ramp = np.zeros((2, 2, 3), dtype=np.uint8)
    ramp[:, 1] = 255  # left column black, right column white: stretched, aspect ratio ignored
    y = preprocess_frame(ramp, image_size=8)
    assert torch.all(y[:, :, 0] < y[:, :, -1]) and torch.allclose(y[:, 0], y[:, 7])
    for bad in (np.zeros((4, 4, 3), np.float32), np.zeros((4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8)):
        with pytest.raises(ValueError):
            preprocess_frame(bad)


@pytest.fixture(scope="module")
def head() -> Sam2Model:
    torch.manual_seed(0)
    h = Sam2Model(tiny().sam2).eval()
    with torch.no_grad():  # make the random decoder's logits span both signs
        for mlp in h.sam_mask_decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.mul_(100)
    return h


@pytest.fixture(scope="module")
def features(head: Sam2Model):
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 1024, 1024)
    return head.encode_image(pixels)


def test_encode_image_shapes(head: Sam2Model, features) -> None:
    assert features.image_embed.shape == (2, 32, 64, 64) and features.image_pos.shape == (2, 32, 64, 64)
    assert features.high_res[0].shape == (2, 4, 256, 256) and features.high_res[1].shape == (2, 8, 128, 128)
    assert not features.image_embed.requires_grad  # no_grad by default
    one = features.frame(1)
    assert len(one) == 1 and torch.equal(one.image_embed[0], features.image_embed[1])
    assert torch.equal(features.frame(-1).high_res[1], one.high_res[1])
    moved = one.to("meta")
    assert moved.image_embed.is_meta and moved.high_res[0].is_meta and moved.image_pos.shape == one.image_pos.shape
    with pytest.raises(ValueError):
        head.encode_image(torch.zeros(1, 3, 512, 512))


def _prompts(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 1, 32, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_decode_first_step_and_memory(head: Sam2Model, features) -> None:
    frame = features.frame(0)
    bank = MemoryBank()
    out = head.decode(frame, _prompts(1, 0), bank, 0, 3, (96, 128))
    assert out.memory_steps == [()]
    assert torch.equal(out.conditioned_embed, frame.image_embed + head.no_mem_embed.view(1, -1, 1, 1))
    assert out.low_res_logits.shape == (1, 1, 256, 256) and out.logits.shape == (1, 1, 96, 128)
    assert out.logits.dtype == torch.float32 and out.all_iou.shape == (1, 4)
    assert out.iou.shape == out.object_score.shape == out.stability.shape == (1,)
    assert (out.token_index == 0).item() == (out.stability >= 0.98).item()
    assert bank.steps == [0] and bank.get(0).features.shape == (16, 64, 64)
    expected = torch.nn.functional.interpolate(out.low_res_logits, (96, 128), mode="bilinear", align_corners=False)
    assert torch.equal(out.logits, expected)
    # the memory is encoded from the conditioned features and sigmoid(20 * p - 10) of the upsampled logits
    mem, pos = head.encode_memory(out.conditioned_embed, out.low_res_logits)
    assert torch.equal(mem[0], bank.get(0).features) and torch.equal(pos[0], bank.get(0).pos_enc)
    hi = torch.nn.functional.interpolate(out.low_res_logits, (1024, 1024), mode="bilinear", align_corners=False)
    direct, _ = head.memory_encoder(out.conditioned_embed, torch.sigmoid(hi) * 20 - 10)
    assert torch.allclose(direct, mem, atol=1e-6)
    with pytest.raises(ValueError, match="already holds step 0"):
        head.decode(frame, _prompts(1, 0), bank, 0, 3, (96, 128))


@torch.no_grad()
def test_decode_memory_selection_and_batching(head: Sam2Model, features) -> None:
    """Two expressions in one call equal two separate calls; a bank missing a step is grouped separately."""
    frame = features.frame(0)
    prompts = _prompts(2, 1)
    solo = [MemoryBank(), MemoryBank()]
    pair = [MemoryBank(), MemoryBank()]
    for step in range(3):
        singles = [head.decode(frame, prompts[i:i + 1], solo[i], step, 3, (40, 50)) for i in range(2)]
        both = head.decode(frame, prompts, pair, step, 3, (40, 50))
        assert both.memory_steps == [s.memory_steps[0] for s in singles]
        for i in range(2):
            assert torch.allclose(both.logits[i], singles[i].logits[0], atol=1e-4)
            assert torch.equal(both.token_index[i:i + 1], singles[i].token_index)
            assert torch.allclose(pair[i].get(step).features, solo[i].get(step).features, atol=1e-5)
    assert both.memory_steps == [(0, 1), (0, 1)]
    # distinct selections in one batch: one bank lacks step 2 -> it attends to [0] only
    banks = [MemoryBank(), MemoryBank()]
    for step in (0, 1, 2):
        head.decode(frame, prompts, banks, step, 3, (40, 50))
    lacking = MemoryBank()
    for step in (0, 1):
        lacking.add(step, banks[1].get(step).features, banks[1].get(step).pos_enc)
    lacking_copy = copy.deepcopy(lacking)
    mixed = head.decode(frame, prompts, [banks[0], lacking], 3, 3, (40, 50))
    alone = head.decode(frame, prompts[1:], lacking_copy, 3, 3, (40, 50))
    assert mixed.memory_steps == [(0, 2), (0,)]
    assert torch.allclose(mixed.logits[1], alone.logits[0], atol=1e-4)


@torch.no_grad()
def test_decode_per_entry_frames_and_no_bank(head: Sam2Model, features) -> None:
    prompts = _prompts(2, 2)
    per_frame = head.decode(features, prompts, None, 5, 3, (32, 32))
    first = head.decode(features.frame(0), prompts[:1], None, 5, 3, (32, 32))
    second = head.decode(features.frame(1), prompts[1:], None, 5, 3, (32, 32))
    assert per_frame.memory_steps == [(), ()]
    assert torch.allclose(per_frame.logits, torch.cat([first.logits, second.logits]), atol=1e-4)
    bank = MemoryBank()
    head.decode(features.frame(0), prompts[:1], bank, 0, 3, (32, 32), write_memory=False)
    assert len(bank) == 0


def test_decode_rejects_bad_inputs(head: Sam2Model, features) -> None:
    frame = features.frame(0)
    bank = MemoryBank()
    with pytest.raises(ValueError, match="prompt_embedding"):
        head.decode(frame, torch.zeros(1, 32), bank, 0, 3, (8, 8))
    with pytest.raises(ValueError, match="one MemoryBank per prompt"):
        head.decode(frame, torch.zeros(2, 1, 32), bank, 0, 3, (8, 8))
    with pytest.raises(ValueError, match="its own MemoryBank"):
        head.decode(frame, torch.zeros(2, 1, 32), [bank, bank], 0, 3, (8, 8))
    with pytest.raises(ValueError, match="frames for 3 prompts"):
        head.decode(features, torch.zeros(3, 1, 32), None, 0, 3, (8, 8))


def test_mask_decoder_dynamic_choice(head: Sam2Model) -> None:
    decoder = head.sam_mask_decoder
    logits = torch.full((2, 1, 4, 8, 8), 5.0)
    logits[0, 0, 0, :4] = 0.01  # token 0 of entry 0: half its area sits inside (-0.05, 0.05): unstable
    logits[0, 0, 2] = -3.0
    iou = torch.tensor([[[0.9, 0.2, 0.7, 0.5]], [[0.1, 0.9, 0.8, 0.7]]])
    stability = decoder.stability(logits[:, 0, 0])
    assert torch.allclose(stability, torch.tensor([0.5, 1.0]))
    chosen, chosen_iou = decoder.choose(logits, iou)
    assert torch.equal(chosen[0, 0, 0], logits[0, 0, 2]) and chosen_iou[0, 0, 0].item() == pytest.approx(0.7)
    assert torch.equal(chosen[1, 0, 0], logits[1, 0, 0]) and chosen_iou[1, 0, 0].item() == pytest.approx(0.1)


def test_train_mode_single_token_and_gradients(features) -> None:
    torch.manual_seed(0)
    head = Sam2Model(tiny().sam2).train()
    frame = features.frame(0)
    bank = MemoryBank()
    with torch.no_grad():
        head.decode(frame, _prompts(1, 3), bank, 0, 1, (64, 64))
    out = head.decode(frame, _prompts(1, 4), bank, 1, 1, (64, 64))
    assert out.all_iou.shape == (1, 1) and out.token_index.item() == 0  # no dynamic fallback in train mode
    out.logits.sum().backward()
    assert head.sam_mask_decoder.iou_token.weight.grad is not None
    assert all(p.grad is None for p in head.memory_attention.parameters())  # under no_grad by default
    assert all(p.grad is None for p in head.image_encoder.parameters())
    out = head.decode(frame, _prompts(1, 5), bank, 2, 1, (64, 64), memory_grad=True)
    out.logits.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head.memory_attention.parameters())
    assert not bank.get(2).features.requires_grad
