"""Read a Meta SAM-2 hydra yaml (``sam2_hiera_l.yaml``, the tiny reference ``sam2_tiny.yaml``) into a Sam2Config.

The yaml is parsed with PyYAML, not hydra: the file is a plain ``model:`` tree of ``_target_`` nodes. Absent keys
take the defaults of Meta's constructors (``Hiera``, ``FpnNeck``, ``MemoryEncoder``, ``MaskDownSampler``, ...).
Settings that glus's SAM-2 model does not implement (another FPN interpolation, ``scalp != 1``, SAM 2.1's extra
object-pointer modules, ...) are rejected with a one-line :class:`GLUSError` instead of being silently ignored.

The dynamic multimask settings are not read from the yaml: GLUS builds SAM-2 with ``build_sam2(...,
apply_postprocessing=True)``, which forces them to (on, delta 0.05, threshold 0.98); Sam2Config's defaults.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from glus.config import Sam2Config
from glus.errors import GLUSError

logger = logging.getLogger(__name__)

# Flags of SAM2Base that only steer Meta's interactive/tracking loop, which GLUS replaces with its own protocol.
_TRACKING_ONLY_KEYS = frozenset({
    "use_mask_input_as_output_without_sam", "directly_add_no_mem_embed", "multimask_output_in_sam",
    "multimask_output_for_tracking", "multimask_min_pt_num", "multimask_max_pt_num",
    "use_multimask_token_for_obj_ptr", "add_tpos_enc_to_obj_ptrs", "only_obj_ptrs_in_the_past_for_eval",
    "fixed_no_obj_ptr", "soft_no_obj_ptr", "compile_image_encoder", "max_cond_frames_in_attn",
    "memory_temporal_stride_for_eval", "add_all_frames_to_correct_as_cond", "non_overlap_masks_for_mem_enc",
    "binarize_mask_from_pts_for_mem_enc", "max_obj_ptrs_in_encoder", "sam_mask_decoder_extra_args",
    "use_signed_tpos_enc_to_obj_ptrs", "fill_hole_area",
})


class _Reader:
    """Typed access to one yaml node with error messages that name the file and the key path."""

    def __init__(self, node: Any, path: str, source: str) -> None:
        if not isinstance(node, Mapping):
            raise GLUSError(f"SAM-2 yaml: '{path}' must be a mapping", source)
        self.node, self.path, self.source = node, path, source

    def sub(self, key: str) -> _Reader:
        if key not in self.node:
            raise GLUSError(f"SAM-2 yaml: missing '{self.path}.{key}'", self.source)
        return _Reader(self.node[key], f"{self.path}.{key}", self.source)

    def get(self, key: str, default: Any, kind: type) -> Any:
        value = self.node.get(key, default)
        try:
            if kind is tuple:
                if not isinstance(value, (list, tuple)):
                    raise TypeError
                return tuple(value)
            if kind is bool:
                if not isinstance(value, bool):
                    raise TypeError
                return value
            if kind is int and (isinstance(value, bool) or float(value) != int(value)):
                raise TypeError
            # PyYAML reads "1e-6" (no dot) as a string: YAML 1.1 floats need one; Meta's files rely on hydra's
            # OmegaConf, which accepts it, so convert explicitly.
            return kind(value)
        except (TypeError, ValueError):
            raise GLUSError(f"SAM-2 yaml: '{self.path}.{key}' = {value!r} is not a valid {kind.__name__}",
                            self.source) from None

    def require(self, key: str, default: Any, expected: Any, kind: type = object) -> None:
        value = self.node.get(key, default)
        if kind is not object:
            value = self.get(key, default, kind)
        if value != expected:
            raise GLUSError(f"SAM-2 yaml: '{self.path}.{key}' = {value!r} is not supported by glus "
                            f"(expected {expected!r})", self.source)

    def target(self, suffix: str) -> None:
        target = str(self.node.get("_target_", ""))
        if not target.endswith(suffix):
            raise GLUSError(f"SAM-2 yaml: '{self.path}._target_' = {target!r}, expected …{suffix}", self.source)


def sam2_config_from_yaml(path: str | Path) -> Sam2Config:
    """Build a :class:`Sam2Config` from a Meta SAM-2 yaml file (e.g. ``sam2_hiera_l.yaml``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise GLUSError(f"cannot read SAM-2 yaml: {exc.strerror or exc}", path) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise GLUSError(f"invalid YAML: {str(exc).splitlines()[0]}", path) from None
    return sam2_config_from_mapping(doc, source=str(path))


def sam2_config_from_mapping(doc: Any, source: str = "<sam2 yaml>") -> Sam2Config:
    """Build a :class:`Sam2Config` from the parsed yaml document (top-level key ``model``)."""
    root = _Reader(doc, "", source)
    model = root.sub("model")
    model.path = "model"
    image_encoder = model.sub("image_encoder")
    trunk, neck = image_encoder.sub("trunk"), image_encoder.sub("neck")
    trunk.target("hieradet.Hiera")
    neck.target("FpnNeck")

    # Hiera trunk (defaults: Meta's Hiera constructor).
    embed_dim = trunk.get("embed_dim", 96, int)
    stages = trunk.get("stages", (2, 3, 16, 3), tuple)
    trunk.require("q_pool", 3, 3, int)
    trunk.require("q_stride", (2, 2), (2, 2), tuple)
    trunk.require("dim_mul", 2.0, 2.0, float)
    trunk.require("head_mul", 2.0, 2.0, float)
    trunk.require("drop_path_rate", 0.0, 0.0, float)
    trunk.require("return_interm_layers", True, True, bool)
    image_encoder.require("scalp", 0, 1, int)  # GLUS uses the three highest-resolution FPN levels

    d_model = neck.get("d_model", 256, int)
    channel_list = neck.get("backbone_channel_list", (), tuple)
    expected_channels = tuple(embed_dim * 2 ** i for i in reversed(range(len(stages))))
    if channel_list != expected_channels:
        raise GLUSError(f"SAM-2 yaml: neck.backbone_channel_list {channel_list} does not match the trunk "
                        f"{expected_channels}", source)
    neck.require("fpn_interp_model", "bilinear", "nearest")
    neck.require("fuse_type", "sum", "sum")
    for key, default in (("kernel_size", 1), ("stride", 1), ("padding", 0)):
        neck.require(key, default, default, int)
    top_down = neck.node.get("fpn_top_down_levels")
    top_down = tuple(range(len(stages))) if top_down is None else neck.get("fpn_top_down_levels", (), tuple)
    _check_sine(neck.sub("position_encoding"), d_model)

    # Memory attention.
    mem_attn = model.sub("memory_attention")
    mem_attn.require("d_model", None, d_model, int)
    mem_attn.require("pos_enc_at_input", None, True, bool)
    mem_attn.require("batch_first", True, True, bool)
    layer = mem_attn.sub("layer")
    layer.require("d_model", None, d_model, int)
    layer.require("activation", None, "relu")
    layer.require("pos_enc_at_attn", None, False, bool)
    layer.require("pos_enc_at_cross_attn_keys", None, True, bool)
    layer.require("pos_enc_at_cross_attn_queries", None, False, bool)
    dropout = layer.get("dropout", 0.1, float)
    self_attn, cross_attn = layer.sub("self_attention"), layer.sub("cross_attention")
    num_heads = self_attn.get("num_heads", 1, int)
    rope_theta = self_attn.get("rope_theta", 10000.0, float)
    feat_sizes = self_attn.get("feat_sizes", (32, 32), tuple)
    for attn in (self_attn, cross_attn):
        attn.target("RoPEAttention")
        attn.require("embedding_dim", None, d_model, int)
        attn.require("num_heads", 1, num_heads, int)
        attn.require("downsample_rate", 1, 1, int)
        attn.require("dropout", 0.0, dropout, float)
        attn.require("rope_theta", 10000.0, rope_theta, float)
        attn.require("feat_sizes", (32, 32), feat_sizes, tuple)
    self_attn.require("rope_k_repeat", False, False, bool)
    cross_attn.require("rope_k_repeat", False, True, bool)

    # Memory encoder.
    mem_enc = model.sub("memory_encoder")
    mem_dim = mem_enc.get("out_dim", None, int)
    mem_enc.require("in_dim", 256, d_model, int)
    _check_sine(mem_enc.sub("position_encoding"), mem_dim)
    down = mem_enc.sub("mask_downsampler")
    down.require("embed_dim", 256, d_model, int)
    down.require("total_stride", 16, 16, int)
    fuser = mem_enc.sub("fuser")
    fuser.require("input_projection", False, False, bool)
    cx = fuser.sub("layer")
    cx.require("dim", None, d_model, int)
    cx.require("use_dwconv", True, True, bool)
    cx.require("drop_path", 0.0, 0.0, float)
    if cross_attn.get("kv_in_dim", None, int) != mem_dim:
        raise GLUSError("SAM-2 yaml: memory_attention cross_attention.kv_in_dim must equal memory_encoder.out_dim",
                        source)

    # SAM2Base flags.
    for key, value in (("use_high_res_features_in_sam", True), ("iou_prediction_use_sigmoid", True),
                       ("pred_obj_scores", True), ("pred_obj_scores_mlp", True)):
        # glus runs transformers' SAM-2 mask decoder, which always has these on (as every released SAM-2 does).
        model.require(key, False, value, bool)
    model.require("backbone_stride", 16, 16, int)
    model.require("proj_tpos_enc_in_obj_ptrs", False, False, bool)  # SAM 2.1 module, not in GLUS checkpoints
    model.require("no_obj_embed_spatial", False, False, bool)
    known = {"_target_", "image_encoder", "memory_attention", "memory_encoder", "num_maskmem", "image_size",
             "sigmoid_scale_for_mem_enc", "sigmoid_bias_for_mem_enc", "use_high_res_features_in_sam",
             "iou_prediction_use_sigmoid", "pred_obj_scores", "pred_obj_scores_mlp", "use_obj_ptrs_in_encoder",
             "use_mlp_for_obj_ptr_proj", "backbone_stride", "proj_tpos_enc_in_obj_ptrs", "no_obj_embed_spatial"}
    for key in sorted(set(model.node) - known - _TRACKING_ONLY_KEYS):
        logger.warning("%s: SAM-2 yaml key model.%s is not used by glus", source, key)

    return Sam2Config(
        image_size=model.get("image_size", 512, int),
        embed_dim=embed_dim,
        num_heads=trunk.get("num_heads", 1, int),
        stages=stages,
        global_att_blocks=trunk.get("global_att_blocks", (12, 16, 20), tuple),
        window_pos_embed_bkg_spatial_size=trunk.get("window_pos_embed_bkg_spatial_size", (14, 14), tuple),
        window_spec=trunk.get("window_spec", (8, 4, 14, 7), tuple),
        d_model=d_model,
        backbone_channel_list=channel_list,
        fpn_top_down_levels=top_down,
        fpn_interp_model="nearest",
        scalp=1,
        mem_attn_num_layers=mem_attn.get("num_layers", None, int),
        mem_attn_dim_feedforward=layer.get("dim_feedforward", None, int),
        mem_attn_num_heads=num_heads,
        mem_attn_rope_feat_sizes=feat_sizes,
        mem_attn_rope_theta=rope_theta,
        mem_attn_dropout=dropout,
        mem_dim=mem_dim,
        mask_downsampler_kernel_size=down.get("kernel_size", 4, int),
        mask_downsampler_stride=down.get("stride", 4, int),
        mask_downsampler_padding=down.get("padding", 0, int),
        fuser_num_layers=fuser.get("num_layers", None, int),
        fuser_kernel_size=cx.get("kernel_size", 7, int),
        fuser_padding=cx.get("padding", 3, int),
        fuser_layer_scale_init_value=cx.get("layer_scale_init_value", 1e-6, float),
        num_maskmem=model.get("num_maskmem", 7, int),
        sigmoid_scale_for_mem_enc=model.get("sigmoid_scale_for_mem_enc", 1.0, float),
        sigmoid_bias_for_mem_enc=model.get("sigmoid_bias_for_mem_enc", 0.0, float),
        iou_prediction_use_sigmoid=True,
        pred_obj_scores=True,
        pred_obj_scores_mlp=True,
        use_high_res_features_in_sam=True,
        use_obj_ptrs_in_encoder=model.get("use_obj_ptrs_in_encoder", False, bool),
        use_mlp_for_obj_ptr_proj=model.get("use_mlp_for_obj_ptr_proj", False, bool),
    )


def _check_sine(node: _Reader, width: int) -> None:
    """The sine position encodings must cover the feature width with Meta's defaults (added to the features)."""
    node.target("PositionEmbeddingSine")
    node.require("num_pos_feats", None, width, int)
    node.require("normalize", True, True, bool)
    node.require("scale", None, None)
    node.require("temperature", 10000, 10000, int)
