"""Checkpoints: the authors' tiny checkpoint, released-layout folders written here, glus's own format.

* ``official_tiny`` (tests/fixtures/reference) loads unchanged, with the fuser gamma rule of ``compat``, and the whole
  chain prompt -> ids -> token / [SEG] embedding of the loaded model reproduces every recorded step;
* released-layout folders written by these tests (a single ``pytorch_model.bin`` and two shards + index, with the
  ``rotary_emb.inv_freq`` buffers transformers 4.31 saved, a CLIP folder and a SAM-2 yaml) load exactly, also for
  a variant with other sizes everywhere, and round-trip bit-identically through glus's format;
* whatever does not fit (keys, shapes, options) is one :class:`GLUSError` line naming it;
* an interrupted save never leaves a folder that loads.
"""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from glus.config import GLUSConfig, Sam2Config, TextConfig, VisionConfig, tiny
from glus.data.sampling import inference_context_frames, query_window
from glus.data.synthetic import make_video
from glus.errors import GLUSError
from glus.model import checkpoint as ckpt
from glus.model.checkpoint import from_pretrained, save_pretrained
from glus.model.glus import GLUSModel
from glus.model.memory_bank import MemoryBank
from glus.model.sam2_yaml import sam2_config_from_yaml
from glus.model.vision_tower import build_vision_tower
from glus.prompts import InferenceConversation, PromptBuilder, build_input_ids
from glus.tokenizer import GLUSTokenizer

from conftest import OFFICIAL_TINY

REF = OFFICIAL_TINY

GAMMAS = [f"model.visual_model.memory_encoder.fuser.layers.{i}.gamma" for i in range(2)]
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


# ------------------------------------------------------------------------------------------------ helpers
def load_official(compat: str | None = None) -> GLUSModel:
    return from_pretrained(REF, vision_tower=REF / "clip", sam2_config=REF / "sam2_tiny.yaml", compat=compat)


def read_frame(path: Path) -> np.ndarray:
    """RGB uint8, read as the official code reads frames (cv2.imread + BGR -> RGB)."""
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def sam2_yaml_doc(cfg: Sam2Config) -> dict:
    """A Meta SAM-2 hydra yaml (the layout of ``sam2_hiera_l.yaml``) describing ``cfg``."""
    def sine(width: int) -> dict:
        return {"_target_": "sam2.modeling.position_encoding.PositionEmbeddingSine", "num_pos_feats": width,
                "normalize": True, "scale": None, "temperature": 10000}

    def rope(**extra) -> dict:
        return {"_target_": "sam2.modeling.sam.transformer.RoPEAttention", "rope_theta": cfg.mem_attn_rope_theta,
                "feat_sizes": list(cfg.mem_attn_rope_feat_sizes), "embedding_dim": cfg.d_model,
                "num_heads": cfg.mem_attn_num_heads, "downsample_rate": 1, "dropout": cfg.mem_attn_dropout, **extra}

    d = cfg.d_model
    return {"model": {
        "_target_": "sam2.modeling.sam2_base.SAM2Base",
        "image_encoder": {
            "_target_": "sam2.modeling.backbones.image_encoder.ImageEncoder", "scalp": cfg.scalp,
            "trunk": {"_target_": "sam2.modeling.backbones.hieradet.Hiera", "embed_dim": cfg.embed_dim,
                      "num_heads": cfg.num_heads, "stages": list(cfg.stages),
                      "global_att_blocks": list(cfg.global_att_blocks),
                      "window_pos_embed_bkg_spatial_size": list(cfg.window_pos_embed_bkg_spatial_size),
                      "window_spec": list(cfg.window_spec)},
            "neck": {"_target_": "sam2.modeling.backbones.image_encoder.FpnNeck", "position_encoding": sine(d),
                     "d_model": d, "backbone_channel_list": list(cfg.backbone_channel_list),
                     "fpn_top_down_levels": list(cfg.fpn_top_down_levels), "fpn_interp_model": "nearest"}},
        "memory_attention": {
            "_target_": "sam2.modeling.memory_attention.MemoryAttention", "d_model": d, "pos_enc_at_input": True,
            "layer": {"_target_": "sam2.modeling.memory_attention.MemoryAttentionLayer", "activation": "relu",
                      "dim_feedforward": cfg.mem_attn_dim_feedforward, "dropout": cfg.mem_attn_dropout,
                      "pos_enc_at_attn": False, "self_attention": rope(), "d_model": d,
                      "pos_enc_at_cross_attn_keys": True, "pos_enc_at_cross_attn_queries": False,
                      "cross_attention": rope(rope_k_repeat=True, kv_in_dim=cfg.mem_dim)},
            "num_layers": cfg.mem_attn_num_layers},
        "memory_encoder": {
            "_target_": "sam2.modeling.memory_encoder.MemoryEncoder", "out_dim": cfg.mem_dim, "in_dim": d,
            "position_encoding": sine(cfg.mem_dim),
            "mask_downsampler": {"_target_": "sam2.modeling.memory_encoder.MaskDownSampler", "embed_dim": d,
                                 "kernel_size": cfg.mask_downsampler_kernel_size,
                                 "stride": cfg.mask_downsampler_stride, "padding": cfg.mask_downsampler_padding},
            "fuser": {"_target_": "sam2.modeling.memory_encoder.Fuser", "num_layers": cfg.fuser_num_layers,
                      "layer": {"_target_": "sam2.modeling.memory_encoder.CXBlock", "dim": d,
                                "kernel_size": cfg.fuser_kernel_size, "padding": cfg.fuser_padding,
                                "layer_scale_init_value": cfg.fuser_layer_scale_init_value, "use_dwconv": True}}},
        "num_maskmem": cfg.num_maskmem, "image_size": cfg.image_size,
        "sigmoid_scale_for_mem_enc": cfg.sigmoid_scale_for_mem_enc,
        "sigmoid_bias_for_mem_enc": cfg.sigmoid_bias_for_mem_enc,
        "use_mask_input_as_output_without_sam": True, "directly_add_no_mem_embed": True,
        "use_high_res_features_in_sam": True, "multimask_output_in_sam": True, "iou_prediction_use_sigmoid": True,
        "use_obj_ptrs_in_encoder": True, "add_tpos_enc_to_obj_ptrs": False, "pred_obj_scores": True,
        "pred_obj_scores_mlp": True, "fixed_no_obj_ptr": True, "use_mlp_for_obj_ptr_proj": True,
    }}


def released_config_json(cfg: GLUSConfig) -> dict:
    """``config.json`` as GLUS's ``save_pretrained`` (transformers 4.31) writes it."""
    t = cfg.text
    return {
        "_name_or_path": "../base_llava", "architectures": ["GLUSForCausalLM"], "bos_token_id": t.bos_token_id,
        "eos_token_id": t.eos_token_id, "freeze_mm_mlp_adapter": True, "hidden_act": t.hidden_act,
        "hidden_size": t.hidden_size, "image_aspect_ratio": "square", "image_grid_pinpoints": None,
        "initializer_range": 0.02, "intermediate_size": t.intermediate_size, "mask_threshold": 0.0,
        "max_hole_area": 0.0, "max_position_embeddings": t.max_position_embeddings, "max_sprinkle_area": 0.0,
        "mm_hidden_size": cfg.vision.hidden_size, "mm_use_im_patch_token": False,
        "mm_use_im_start_end": cfg.mm_use_im_start_end, "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": cfg.vision.select_layer, "mm_vision_tower": "clip", "model_type": "llava",
        "num_attention_heads": t.num_attention_heads, "num_hidden_layers": t.num_hidden_layers,
        "num_key_value_heads": t.num_key_value_heads, "out_dim": cfg.prompt_dim, "pad_token_id": t.pad_token_id,
        "pretrain_mm_mlp_adapter": None, "pretraining_tp": 1, "rms_norm_eps": t.rms_norm_eps, "rope_scaling": None,
        "tie_word_embeddings": False, "torch_dtype": "float32", "train_mask_decoder": True,
        "transformers_version": "4.31.0", "tune_mm_mlp_adapter": False, "use_cache": False, "use_mm_proj": True,
        "vision_tower": "clip", "vocab_size": t.vocab_size,
    }


def released_state_dict(model: GLUSModel) -> dict[str, torch.Tensor]:
    """The model's tensors plus the ``rotary_emb.inv_freq`` buffers transformers 4.31 saved in every layer."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    t = model.config.text
    dim = t.hidden_size // t.num_attention_heads
    inv_freq = 1.0 / (t.rope_theta ** (torch.arange(0, dim, 2).float() / dim))
    for i in range(t.num_hidden_layers):
        state[f"model.layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    return state


def write_released(model: GLUSModel, folder: Path, *, shards: int = 1,
                   state: dict[str, torch.Tensor] | None = None, config: dict | None = None) -> Path:
    """Write ``model`` in the released layout: weights (1 file or ``shards`` shards + index), config.json,
    generation_config.json, the tiny tokenizer, and the CLIP tower in ``clip/`` (the config names ``"clip"``)."""
    folder.mkdir(parents=True)
    state = released_state_dict(model) if state is None else state
    keys = list(state)
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
    else:
        weight_map, total = {}, 0
        for i, part in enumerate(np.array_split(np.arange(len(keys)), shards)):
            name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
            torch.save({keys[j]: state[keys[j]] for j in part}, folder / name)
            weight_map.update({keys[j]: name for j in part})
            total += sum(state[keys[j]].numel() * state[keys[j]].element_size() for j in part)
        (folder / "pytorch_model.bin.index.json").write_text(
            json.dumps({"metadata": {"total_size": int(total)}, "weight_map": weight_map}, indent=2))
    (folder / "config.json").write_text(json.dumps(config or released_config_json(model.config), indent=2))
    (folder / "generation_config.json").write_text((REF / "generation_config.json").read_text())
    for name in TOKENIZER_FILES:
        (folder / name).write_bytes((REF / name).read_bytes())
    model.vision_tower.clip.save_pretrained(folder / "clip")
    model.clip_processor.save_pretrained(folder / "clip")
    return folder


def write_yaml(cfg: Sam2Config, path: Path) -> Path:
    path.write_text(yaml.safe_dump(sam2_yaml_doc(cfg), sort_keys=False))
    assert sam2_config_from_yaml(path) == cfg  # the file describes exactly this SAM-2
    return path


def random_model(config: GLUSConfig, seed: int) -> GLUSModel:
    """A GLUS model whose every tensor is random (norm weights, biases and the fuser gammas included), so that a
    loader that skips, swaps or re-initialises any tensor is caught."""
    torch.manual_seed(seed)
    model = GLUSModel(config, vision_tower=build_vision_tower(config.vision)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        # the [SEG] row large enough that the random LM does emit [SEG] at the last prompt position
        model.lm_head.weight[700] *= 40
    model.seg_token_id = 700
    return model


def variant_config() -> GLUSConfig:
    """Sizes unlike the tiny preset everywhere: LLaMA width/depth/heads, CLIP, prompt width, SAM-2 widths, depth,
    heads, memory width and input size."""
    return GLUSConfig(
        text=TextConfig(vocab_size=703, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                        num_attention_heads=3, num_key_value_heads=3, rms_norm_eps=1e-5),
        vision=VisionConfig(name_or_path="clip", hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                            num_attention_heads=3, projection_dim=16),
        sam2=Sam2Config(image_size=512, embed_dim=12, num_heads=2, stages=(1, 2, 1, 1), global_att_blocks=(2,),
                        d_model=48, backbone_channel_list=(96, 48, 24, 12), mem_attn_num_layers=2,
                        mem_attn_dim_feedforward=40, mem_attn_num_heads=2, mem_attn_rope_feat_sizes=(32, 32),
                        mem_dim=24),
        prompt_dim=48,
    )


def model_outputs(model: GLUSModel, tokenizer: GLUSTokenizer, frames: np.ndarray) -> dict[str, torch.Tensor]:
    """Everything the model computes on a short video: LLM logits and [SEG] embeddings of a two-step conversation,
    and SAM-2 logits of three steps through the memory bank (memory attention, memory encoder and fuser used)."""
    builder = PromptBuilder.from_config(model.config)
    conv = InferenceConversation(builder, "The red circle moving right.")
    out: dict[str, torch.Tensor] = {}
    bank = MemoryBank()
    with torch.no_grad():
        clip = model.clip_embed_frames(list(frames))
        for step in range(3):
            ids = build_input_ids(conv.prompt(), tokenizer, builder)
            window = query_window(step, builder.query_frames)
            images = clip[[0, 1, 2, 3, *window]]
            token = model.generate_one_token(model.build_inputs_embeds([ids], images))
            conv.record(int(token.token_ids[0]) == tokenizer.seg_token_id)
            feats = model.sam_encode_frame(frames[step]).features
            res = model.sam2.decode(feats, token.seg_embedding.unsqueeze(1), bank, step, 3, frames.shape[1:3])
            out.update({f"logits{step}": token.logits, f"seg{step}": token.seg_embedding,
                        f"mask{step}": res.logits, f"iou{step}": res.all_iou})
    return out


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert list(a) == list(b)
    for k, value in a.items():
        assert value.dtype == b[k].dtype and torch.equal(value, b[k]), k


def assert_same_outputs(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k, value in a.items():
        assert torch.equal(value, b[k]), (k, float((value.float() - b[k].float()).abs().max()))


# ------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def official() -> GLUSModel:
    return load_official()


@pytest.fixture(scope="module")
def file_state() -> dict[str, torch.Tensor]:
    return torch.load(REF / "pytorch_model.bin", map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def tokenizer() -> GLUSTokenizer:
    return GLUSTokenizer.from_pretrained(REF)


@pytest.fixture(scope="module")
def video() -> np.ndarray:
    return make_video(3, num_frames=5, height=48, width=64).frames


@pytest.fixture(scope="module")
def tiny_released(tmp_path_factory) -> tuple[GLUSModel, Path, Path]:
    """A random tiny model, its released-layout folder and its SAM-2 yaml."""
    root = tmp_path_factory.mktemp("tiny_released")
    model = random_model(tiny(), seed=1)
    return model, write_released(model, root / "ckpt"), write_yaml(model.config.sam2, root / "sam2.yaml")


@pytest.fixture(scope="module")
def variant_released(tmp_path_factory) -> tuple[GLUSModel, Path, Path]:
    root = tmp_path_factory.mktemp("variant_released")
    model = random_model(variant_config(), seed=2)
    return model, write_released(model, root / "ckpt", shards=2), write_yaml(model.config.sam2, root / "sam2.yaml")


# ------------------------------------------------------------------------------------------------ official tiny
def test_official_tiny_loads_unchanged(official: GLUSModel, file_state: dict[str, torch.Tensor]) -> None:
    state = official.state_dict()
    inv_freq = [f"model.layers.{i}.self_attn.rotary_emb.inv_freq" for i in range(2)]
    # every tensor of the file is a model tensor (the two 4.31 rotary buffers aside) and nothing is missing
    assert set(file_state) - set(state) == set(inv_freq)
    assert set(state) == set(file_state) - set(inv_freq) and len(state) == 333
    for key, value in state.items():
        if key not in GAMMAS:
            assert torch.equal(value, file_state[key]), key
    # compat="official" (the default): the authors' loader leaves the fuser gammas at their init value
    for key in GAMMAS:
        assert torch.equal(state[key], torch.full_like(file_state[key], 1e-6))
        assert not torch.equal(file_state[key], state[key])  # the file holds other values (de-degenerated)
    tensors = [*official.parameters(), *official.buffers(), *official.vision_tower.parameters()]
    assert all(t.device.type == "cpu" for t in tensors)  # nothing left on the meta device of the loader
    assert all(t.dtype == torch.float32 for t in tensors if t.is_floating_point())
    assert official.seg_token_id == 700 and not official.training
    assert official.config.sam2 == tiny().sam2 and official.config.text == tiny().text
    assert official.config.prompt_dim == 32 and official.tokens_per_frame == 64


def test_official_tiny_stored_compat_loads_the_file_gammas(file_state: dict[str, torch.Tensor]) -> None:
    state = load_official("stored").state_dict()
    for key in GAMMAS:
        assert torch.equal(state[key], file_state[key])


def _steps(run: dict):
    for expr in run["expressions"]:
        for p in expr["passes"]:
            yield expr, p


def test_official_chain_prompt_ids_token_and_seg_embedding(official: GLUSModel, tokenizer: GLUSTokenizer,
                                                           reference: dict) -> None:
    """For every recorded step of the rigged runs: prompt -> ids -> generated token and [SEG] embedding."""
    frames = [read_frame(REF / rec["png"]) for rec in reference["frames"]]
    builder = PromptBuilder.from_config(official.config)
    context = inference_context_frames(len(frames), official.config.context_frames)
    checked = 0
    with torch.no_grad():
        clip = official.clip_embed_frames(frames)  # [T, 64, 64]; each frame is encoded on its own
        for run in reference["runs"]:
            if run["run"] not in ("rigged_no_kf", "rigged_kf4"):
                continue
            for expr, p in _steps(run):
                assert p["context_frames"] == context
                conv = InferenceConversation(builder, expr["expression"])
                for index, step in enumerate(p["steps"]):
                    where = f"{run['run']} exp {expr['exp_id']} {p['name']} step {step['step']}"
                    window = [p["question_frames"][s] for s in query_window(index, builder.query_frames)]
                    assert window == step["question_frames_in_prompt"], where
                    prompt = conv.prompt()
                    assert prompt == step["prompt"], where
                    ids = build_input_ids(prompt, tokenizer, builder)
                    assert ids.tolist() == step["input_ids"], where
                    token = official.generate_one_token(official.build_inputs_embeds([ids], clip[context + window]))
                    assert int(token.token_ids[0]) == step["generated_token_id"] == tokenizer.seg_token_id, where
                    diff = (token.seg_embedding[0] - torch.tensor(step["seg_embedding"])).abs().max()
                    assert diff <= 1e-4, where
                    conv.record(True)
                    checked += 1
    assert checked == 20 + 22


def test_official_chain_failure_path_prompts(official: GLUSModel, tokenizer: GLUSTokenizer, reference: dict) -> None:
    """With the unrigged [SEG] row the model never emits [SEG]; the failure-path answers ("[SEG] .") enter the
    later prompts exactly as the official code writes them (first steps of every pass of both unrigged runs)."""
    frames = [read_frame(REF / rec["png"]) for rec in reference["frames"]]
    builder = PromptBuilder.from_config(official.config)
    context = inference_context_frames(len(frames))
    row = reference["rigging"]["row"]
    rigged = official.lm_head.weight[row].clone()
    checked = 0
    try:
        with torch.no_grad():
            official.lm_head.weight[row] = torch.tensor(reference["rigging"]["unrigged_row"])
            clip = official.clip_embed_frames(frames)
            for run in reference["runs"]:
                if not run["run"].startswith("unrigged"):
                    continue
                for expr, p in _steps(run):
                    conv = InferenceConversation(builder, expr["expression"])
                    for index, step in enumerate(p["steps"][:3]):
                        ids = build_input_ids(conv.prompt(), tokenizer, builder)
                        assert ids.tolist() == step["input_ids"]
                        window = [p["question_frames"][s] for s in query_window(index, builder.query_frames)]
                        token = official.generate_one_token(official.build_inputs_embeds([ids], clip[context + window]))
                        assert int(token.token_ids[0]) == step["generated_token_id"] != tokenizer.seg_token_id
                        conv.record(False)
                        checked += 1
    finally:
        with torch.no_grad():
            official.lm_head.weight[row] = rigged
    assert checked == 3 * (2 + 4)  # unrigged_no_kf: 2 passes (one per expression); unrigged_kf4: 4


# ------------------------------------------------------------------------------------------------ released layout
def test_released_layout_loads_exactly(tiny_released, tokenizer: GLUSTokenizer, video: np.ndarray) -> None:
    model, folder, sam_yaml = tiny_released
    # the config names the vision tower "clip": found beside the checkpoint, no --vision-tower needed
    stored = from_pretrained(folder, sam2_config=sam_yaml, compat="stored")
    assert_same_state(stored.state_dict(), model.state_dict())
    assert_same_state(stored.vision_tower.state_dict(), model.vision_tower.state_dict())
    # the whole config comes from config.json, the CLIP folder and the yaml (the tower is named as the file names it)
    assert stored.config == replace(model.config, vision=replace(model.config.vision, name_or_path="clip"))
    assert stored.seg_token_id == 700
    assert_same_outputs(model_outputs(stored, tokenizer, video), model_outputs(model, tokenizer, video))

    official = from_pretrained(folder, vision_tower=folder / "clip", sam2_config=sam_yaml)  # compat official
    state = official.state_dict()
    for key, value in model.state_dict().items():
        expected = torch.full_like(value, 1e-6) if key in GAMMAS else value
        assert torch.equal(state[key], expected), key


def test_sharded_released_layout_loads_exactly(tiny_released, tmp_path: Path) -> None:
    model, _, sam_yaml = tiny_released
    folder = write_released(model, tmp_path / "sharded", shards=2)
    index = json.loads((folder / "pytorch_model.bin.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == ["pytorch_model-00001-of-00002.bin",
                                                         "pytorch_model-00002-of-00002.bin"]
    loaded = from_pretrained(folder, sam2_config=sam_yaml, compat="stored")
    assert_same_state(loaded.state_dict(), model.state_dict())


def test_glus_format_round_trip_is_bit_identical(tiny_released, tokenizer: GLUSTokenizer, video: np.ndarray,
                                                 tmp_path: Path) -> None:
    _, folder, sam_yaml = tiny_released
    released = from_pretrained(folder, sam2_config=sam_yaml)
    out = save_pretrained(released, tmp_path / "glus", tokenizer, source=str(folder))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["config.json", "model.safetensors", "vision_tower", *TOKENIZER_FILES])
    raw = json.loads((out / "config.json").read_text())
    assert raw["format"] == "glus" and GLUSConfig.from_dict(raw["config"]) == released.config
    again = from_pretrained(out)  # no --vision-tower / --sam2-config: the folder holds everything
    assert again.config == released.config and again.seg_token_id == 700
    assert_same_state(again.state_dict(), released.state_dict())
    assert_same_state(again.vision_tower.state_dict(), released.vision_tower.state_dict())
    # safetensors data need not be allocator-aligned; unaligned weights would round differently in BLAS kernels
    assert all(p.data_ptr() % 64 == 0 for p in again.parameters())
    assert_same_outputs(model_outputs(again, tokenizer, video), model_outputs(released, tokenizer, video))
    assert GLUSTokenizer.from_pretrained(out).encode("Sure, [SEG].") == tokenizer.encode("Sure, [SEG].")


def test_variant_sizes_load_from_config_yaml_and_clip(variant_released, tokenizer: GLUSTokenizer,
                                                      video: np.ndarray, tmp_path: Path) -> None:
    """Nothing assumes the tiny sizes: a checkpoint with other sizes everywhere loads from its own files."""
    model, folder, sam_yaml = variant_released
    loaded = from_pretrained(folder, vision_tower=folder / "clip", sam2_config=sam_yaml, compat="stored")
    cfg = loaded.config
    assert cfg.text == model.config.text and cfg.sam2 == model.config.sam2 and cfg.prompt_dim == 48
    assert (cfg.vision.hidden_size, cfg.vision.num_hidden_layers, cfg.vision.num_attention_heads) == (24, 3, 3)
    assert_same_state(loaded.state_dict(), model.state_dict())
    expected = model_outputs(model, tokenizer, video)
    assert expected["mask0"].shape == (1, 1, 48, 64)
    assert_same_outputs(model_outputs(loaded, tokenizer, video), expected)
    # and through glus's format
    again = from_pretrained(save_pretrained(loaded, tmp_path / "glus", tokenizer))
    assert again.config == loaded.config
    assert_same_outputs(model_outputs(again, tokenizer, video), expected)


# ------------------------------------------------------------------------------------------------ errors
def _broken(tiny_released, tmp_path: Path, edit) -> Path:
    model, _, _ = tiny_released
    state = released_state_dict(model)
    edit(state)
    return write_released(model, tmp_path / "broken", state=state)


def test_unknown_keys_are_named(tiny_released, tmp_path: Path) -> None:
    def edit(state):
        state["model.extra_adapter.weight"] = torch.zeros(2)
        state["model.visual_model.sam_mask_decoder.extra_token.weight"] = torch.zeros(2)

    folder = _broken(tiny_released, tmp_path, edit)
    with pytest.raises(GLUSError) as err:
        from_pretrained(folder, sam2_config=tiny_released[2])
    msg = str(err.value)
    assert "\n" not in msg and str(folder) in msg and "2 unexpected key(s)" in msg
    assert "model.extra_adapter.weight" in msg and "model.visual_model.sam_mask_decoder.extra_token.weight" in msg


def test_missing_keys_are_named(tiny_released, tmp_path: Path) -> None:
    def edit(state):
        del state["model.layers.1.mlp.up_proj.weight"]
        del state["model.visual_model.memory_attention.layers.0.linear1.bias"]

    folder = _broken(tiny_released, tmp_path, edit)
    with pytest.raises(GLUSError) as err:
        from_pretrained(folder, sam2_config=tiny_released[2])
    msg = str(err.value)
    assert "\n" not in msg and "2 missing key(s)" in msg and "unexpected" not in msg
    assert "model.layers.1.mlp.up_proj.weight" in msg
    assert "model.visual_model.memory_attention.layers.0.linear1.bias" in msg


@pytest.mark.parametrize("key", ["model.mm_projector.weight", "model.visual_model.sam_mask_decoder.iou_token.weight"])
def test_mis_shaped_tensors_are_named(tiny_released, tmp_path: Path, key: str) -> None:
    def edit(state):
        state[key] = torch.zeros(state[key].shape[0] + 1, *state[key].shape[1:])

    folder = _broken(tiny_released, tmp_path, edit)
    with pytest.raises(GLUSError) as err:
        from_pretrained(folder, sam2_config=tiny_released[2])
    msg = str(err.value)
    assert "\n" not in msg and str(folder) in msg and key.removeprefix("model.visual_model.") in msg


def test_wrong_sam2_config_or_options_are_one_line_errors(tiny_released, tmp_path: Path) -> None:
    model, folder, sam_yaml = tiny_released
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("model: [unclosed\n")
    other = copy.deepcopy(model.config.sam2)
    other.mem_dim = 8  # fits out_dim, not the stored memory tensors
    cases = [
        ({"sam2_config": bad_yaml}, "invalid YAML"),
        ({"sam2_config": tmp_path / "absent.yaml"}, "SAM-2 config not found"),
        ({"sam2_config": write_yaml(other, tmp_path / "other.yaml")}, "do not fit"),
        ({"sam2_config": None}, "out_dim"),  # the built-in Hiera-L: 256-d prompts expected, the [SEG] head gives 32
        ({"sam2_config": sam_yaml, "vision_tower": tmp_path / "no_clip"}, "CLIP vision tower folder not found"),
    ]
    for kwargs, text in cases:
        with pytest.raises(GLUSError) as err:
            from_pretrained(folder, **kwargs)
        assert "\n" not in str(err.value) and text in str(err.value), (kwargs, str(err.value))

    for change, text in (({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
                         ({"mm_vision_select_feature": "cls_patch"}, "mm_vision_select_feature"),
                         ({"mm_hidden_size": 1024}, "CLIP width 1024"),
                         ({"vocab_size": 700}, "[SEG] id 700")):
        target = tmp_path / f"opt_{next(iter(change))}"
        write_released(model, target, config={**released_config_json(model.config), **change},
                       state=released_state_dict(model) if "vocab_size" not in change else
                       {k: v[:700] if k in ("model.embed_tokens.weight", "lm_head.weight") else v
                        for k, v in released_state_dict(model).items()})
        with pytest.raises(GLUSError) as err:
            from_pretrained(target, sam2_config=sam_yaml)
        assert "\n" not in str(err.value) and text in str(err.value), str(err.value)


def test_not_a_checkpoint_folder(tmp_path: Path) -> None:
    with pytest.raises(GLUSError, match="checkpoint folder not found"):
        from_pretrained(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GLUSError, match="config.json not found"):
        from_pretrained(tmp_path / "empty")


# ------------------------------------------------------------------------------------------------ atomic saves
def test_interrupted_save_leaves_no_loadable_folder(tiny_released, tokenizer: GLUSTokenizer, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _, folder, sam_yaml = tiny_released
    model = from_pretrained(folder, sam2_config=sam_yaml)
    out = save_pretrained(model, tmp_path / "glus", tokenizer)  # a complete folder first

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_safetensors_atomic", crash)
    with pytest.raises(KeyboardInterrupt):
        save_pretrained(model, out, tokenizer)  # overwrite, interrupted while writing the weights
    assert not (out / "config.json").exists()  # the old config.json went first: the folder no longer loads
    with pytest.raises(GLUSError, match="config.json not found"):
        from_pretrained(out)
