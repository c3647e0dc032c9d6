"""Typed configuration of the GLUS model and its two presets (``tiny`` and ``glus-7b``).

Every size, frame count and token count the model uses comes from here; no other module hard-codes one.
Configs are plain dataclasses so they serialise to ``config.json`` (:meth:`GLUSConfig.to_dict`) and back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass
class TextConfig:
    """The LLaMA language model (``transformers.LlamaConfig`` fields)."""

    vocab_size: int = 32004
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    hidden_act: str = "silu"
    bos_token_id: int = 1
    eos_token_id: int = 2
    pad_token_id: int = 0
    tie_word_embeddings: bool = False


@dataclass
class VisionConfig:
    """The CLIP vision tower (``transformers.CLIPVisionConfig`` fields) and how LLaVA reads it."""

    name_or_path: str = "openai/clip-vit-large-patch14"
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    projection_dim: int = 768
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    select_layer: int = -2  # LLaVA's mm_vision_select_layer; the CLS token is dropped ("patch")
    # How a frame becomes the tower's square input when no preprocessor_config.json says otherwise: "crop" is
    # LLaVA's (shortest edge to image_size, centre crop: a wide frame loses its sides, as every released GLUS model
    # sees it); "resize" squeezes the whole frame into the square, as SAM-2 does, so nothing at the edges is lost.
    preprocess: str = "crop"
    # A randomly initialised tower (a preset trained from scratch) draws its position embeddings this many times
    # larger than CLIP's initializer: at CLIP's own scale a random patch embedding drowns them (see small_grid).
    # Loaded towers keep their weights; the scaled ones are saved with the model.
    random_position_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.preprocess not in ("crop", "resize"):
            raise ValueError(f"vision preprocess must be 'crop' or 'resize', got {self.preprocess!r}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class Sam2Config:
    """SAM-2 (Meta's ``sam2_hiera_*.yaml`` fields; defaults = Hiera-L, SAM 2.0, as GLUS uses it)."""

    image_size: int = 1024
    # Hiera trunk
    embed_dim: int = 144
    num_heads: int = 2
    stages: tuple[int, ...] = (2, 6, 36, 4)
    global_att_blocks: tuple[int, ...] = (23, 33, 43)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (7, 7)
    window_spec: tuple[int, ...] = (8, 4, 16, 8)
    # FPN neck
    d_model: int = 256
    backbone_channel_list: tuple[int, ...] = (1152, 576, 288, 144)
    fpn_top_down_levels: tuple[int, ...] = (2, 3)
    fpn_interp_model: str = "nearest"
    scalp: int = 1
    # memory attention
    mem_attn_num_layers: int = 4
    mem_attn_dim_feedforward: int = 2048
    mem_attn_num_heads: int = 1
    mem_attn_rope_feat_sizes: tuple[int, int] = (32, 32)  # yaml value; RoPE runs on the real (S/16)^2 grid
    mem_attn_rope_theta: float = 10000.0
    mem_attn_dropout: float = 0.1  # layer and attention dropout (active only in train mode)
    # memory encoder
    mem_dim: int = 64
    mask_downsampler_kernel_size: int = 3
    mask_downsampler_stride: int = 2
    mask_downsampler_padding: int = 1
    fuser_num_layers: int = 2
    fuser_kernel_size: int = 7
    fuser_padding: int = 3
    fuser_layer_scale_init_value: float = 1e-6
    # SAM-2 base flags that matter to GLUS
    num_maskmem: int = 7
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    iou_prediction_use_sigmoid: bool = True
    pred_obj_scores: bool = True
    pred_obj_scores_mlp: bool = True
    # object-pointer modules: unused by GLUS but present in the checkpoint (obj_ptr_proj, no_obj_ptr, mask_downsample)
    use_obj_ptrs_in_encoder: bool = True
    use_mlp_for_obj_ptr_proj: bool = True
    use_high_res_features_in_sam: bool = True
    dynamic_multimask_via_stability: bool = True
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98


@dataclass
class GLUSConfig:
    """The whole GLUS model: LLM + CLIP + pooling + projector + seg head + SAM-2, and the video protocol."""

    text: TextConfig = field(default_factory=TextConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    sam2: Sam2Config = field(default_factory=Sam2Config)
    pool_kernel: int = 4  # AvgPool1d over CLIP patch tokens: 256 -> 64 per frame
    prompt_dim: int = 256  # out_dim of text_hidden_fcs = SAM-2 prompt width
    context_frames: int = 4
    query_frames: int = 4
    mem_stride_train: int = 1
    mem_stride_infer: int = 3
    mm_use_im_start_end: bool = True
    image_token_index: int = -200
    seg_token: str = "[SEG]"
    im_start_token: str = "<im_start>"
    im_end_token: str = "<im_end>"
    image_token: str = "<image>"

    @property
    def num_maskmem(self) -> int:
        return self.sam2.num_maskmem

    @property
    def image_tokens_per_frame(self) -> int:
        return self.vision.num_patches // self.pool_kernel

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "GLUSConfig":
        """Build from :meth:`to_dict` output; unknown keys are an error (a typo must not pass silently)."""
        data = dict(data)
        subs = {"text": TextConfig, "vision": VisionConfig, "sam2": Sam2Config}
        kwargs: dict[str, Any] = {}
        for name, sub_cls in subs.items():
            if name in data:
                kwargs[name] = _build(sub_cls, data.pop(name))
        kwargs.update(_check_keys(cls, data, exclude=set(subs)))
        return cls(**kwargs)


def _check_keys(cls: type, data: dict[str, Any], exclude: set[str] = frozenset()) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(cls)} - set(exclude)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys: {', '.join(unknown)}")
    return data


def _build(cls: type, data: dict[str, Any]) -> Any:
    data = _check_keys(cls, dict(data))
    # JSON turns tuples into lists; restore tuples so configs compare equal after a round trip.
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def glus_7b() -> GLUSConfig:
    """The released architecture: LLaMA-7B (LISA-7B-v1), CLIP ViT-L/14-224, SAM-2 Hiera-L."""
    return GLUSConfig()


def tiny() -> GLUSConfig:
    """A few-MB model with the same module graph as the authors' tiny reference checkpoint (CPU, fp32)."""
    return GLUSConfig(
        text=TextConfig(vocab_size=703, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=4),
        vision=VisionConfig(name_or_path="", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                            num_attention_heads=2, projection_dim=32),
        sam2=Sam2Config(embed_dim=8, num_heads=1, stages=(1, 1, 2, 1), global_att_blocks=(3,),
                        d_model=32, backbone_channel_list=(64, 32, 16, 8), mem_attn_num_layers=1,
                        mem_attn_dim_feedforward=64, mem_attn_rope_feat_sizes=(64, 64), mem_dim=16),
        prompt_dim=32,
    )


def small() -> GLUSConfig:
    """The embedded demo model's architecture: trains from scratch on the synthetic benchmark on a CPU in under an
    hour and segments a clip in seconds (SAM-2 at 256 px: a 16x16 feature grid).

    The CLIP tower stays frozen with its seeded random weights, as the real one stays frozen with OpenAI's; one
    layer is enough for a random projector of patch colour and position, so the LLaMA reads ``hidden_states[0]``.
    Pooling 8 patch tokens into one (32 per frame, not 64: half rows of the 16 x 16 patch grid, so the LLM still
    sees left from right and each row) keeps the prompt short: the few expression tokens are a larger share of
    what the ``[SEG]`` position attends to, which a language model trained from scratch needs to learn to read
    them, and each LLM call is about 2x cheaper.
    """
    return GLUSConfig(
        text=TextConfig(vocab_size=703, hidden_size=128, intermediate_size=256, num_hidden_layers=3,
                        num_attention_heads=4, num_key_value_heads=4),
        vision=VisionConfig(name_or_path="", hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                            num_attention_heads=2, projection_dim=64),
        sam2=Sam2Config(image_size=256, embed_dim=16, num_heads=1, stages=(1, 2, 2, 1), global_att_blocks=(4,),
                        d_model=64, backbone_channel_list=(128, 64, 32, 16), mem_attn_num_layers=1,
                        mem_attn_dim_feedforward=128, mem_attn_rope_feat_sizes=(16, 16), mem_dim=32),
        prompt_dim=64,
        pool_kernel=8,
    )


def small_grid() -> GLUSConfig:
    """:func:`small` with a language model that can see where things are (docs/demo.md, "What was tried").

    In :func:`small` the LLaMA can hardly tell where on a frame an object lies: LLaVA's centre crop cuts a third off
    the 3:2 frames, pooling 8 of 16 x 16 patches keeps only which half of a row a colour was in, and the random
    tower's position embeddings are drowned by its patch content (a linear probe reads even that half with R^2 0.37
    on synthetic frames), while LLaMA's rotary positions tell how far apart two tokens are, never where on the
    frame one lies. Here the tower sees the whole frame (``preprocess="resize"``) at 112 px (8 x 8 patches), pairs
    of neighbours are pooled (32 tokens on a 4 x 8 grid, each about an object's size), and the random position
    embeddings are drawn 5x CLIP's scale at hidden 128 (the probe reads the quarter of a row with R^2 0.81).
    Trained with the embedded recipe plus ``seg_click_weight 1.0`` it did not beat :func:`small` (validation J&F
    0.43 at step 1600 against 0.46): what the LLM sees was not the only limit.
    """
    cfg = small()
    vision = replace(cfg.vision, hidden_size=128, intermediate_size=256, image_size=112, patch_size=14,
                     preprocess="resize", random_position_scale=5.0)
    return replace(cfg, vision=vision, pool_kernel=2)


PRESETS = {"glus-7b": glus_7b, "tiny": tiny, "small": small, "small-grid": small_grid}


def preset(name: str) -> GLUSConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
