"""The SAM-2 building blocks of glus: transformers' maintained SAM-2 modules, configured from a Sam2Config.

glus reuses ``transformers.models.sam2`` (Hiera vision encoder + FPN neck, prompt encoder, mask decoder) and
``transformers.models.sam2_video`` (memory attention, memory encoder). Two small subclasses close the gaps
between those modules and the computation GLUS needs:

* :class:`MemoryAttention` — transformers hard-codes the cross-attention key/value width to 64 (Hiera-L's
  memory width); Meta's ``kv_in_dim`` follows the memory encoder's ``out_dim`` (16 in the tiny checkpoint).
* :class:`MaskDecoder` — transformers' decoder applies the dynamic multimask choice internally and returns only
  the pick; glus needs the stability score and the branch taken, so the choice is deferred to the caller
  (:func:`glus.model.sam2_model.select_mask_token`), which applies transformers' own rule.

The memory-encoding helper of ``Sam2VideoModel`` (which casts memories to bfloat16) is not used: glus calls the
memory encoder module directly and keeps the model's dtype (fp32 on CPU).

The modules of Meta's SAM2Base that GLUS never runs but that released checkpoints contain (object-pointer
projection, temporal memory encoding, ...) are plain parameters of :class:`glus.model.sam2_model.Sam2Model`;
their MLP is :class:`MetaMLP` here.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.sam2.configuration_sam2 import (
    Sam2HieraDetConfig,
    Sam2MaskDecoderConfig,
    Sam2PromptEncoderConfig,
    Sam2VisionConfig,
)
from transformers.models.sam2.modeling_sam2 import Sam2MaskDecoder
from transformers.models.sam2_video.configuration_sam2_video import Sam2VideoConfig
from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoMemoryAttention, Sam2VideoRoPEAttention

from glus.config import Sam2Config

# Fixed by Meta's SAM2Base._build_sam_heads (not in the yaml).
DECODER_DEPTH = 2
DECODER_MLP_DIM = 2048
DECODER_NUM_HEADS = 8
DECODER_ATTENTION_DOWNSAMPLE = 2
IOU_HEAD_DEPTH = 3
IOU_HEAD_HIDDEN_DIM = 256
NUM_MULTIMASK_OUTPUTS = 3
PROMPT_MASK_IN_CHANS = 16
BACKBONE_STRIDE = 16
# transformers' attention backend: torch SDPA, the kernel Meta's SAM-2 uses.
ATTN_IMPLEMENTATION = "sdpa"


def feature_sizes(cfg: Sam2Config) -> tuple[tuple[int, int], ...]:
    """Spatial sizes of the three FPN levels GLUS uses, high to low resolution: (S/4, S/8, S/16)."""
    return tuple((cfg.image_size // s, cfg.image_size // s) for s in (4, 8, BACKBONE_STRIDE))


def vision_config(cfg: Sam2Config) -> Sam2VisionConfig:
    """Hiera trunk + FPN neck. ``scalp=1``: the lowest-resolution level is dropped, three levels remain."""
    n_stages = len(cfg.stages)
    hiera = Sam2HieraDetConfig(
        hidden_size=cfg.embed_dim,
        num_attention_heads=cfg.num_heads,
        image_size=[cfg.image_size, cfg.image_size],
        blocks_per_stage=list(cfg.stages),
        embed_dim_per_stage=[cfg.embed_dim * 2 ** i for i in range(n_stages)],
        num_attention_heads_per_stage=[cfg.num_heads * 2 ** i for i in range(n_stages)],
        window_size_per_stage=list(cfg.window_spec),
        global_attention_blocks=list(cfg.global_att_blocks),
        window_positional_embedding_background_size=list(cfg.window_pos_embed_bkg_spatial_size),
        num_query_pool_stages=3,  # Meta's Hiera q_pool (checked by the yaml reader)
        query_stride=[2, 2],
        attn_implementation=ATTN_IMPLEMENTATION,
    )
    return Sam2VisionConfig(
        backbone_config=hiera,
        backbone_channel_list=list(cfg.backbone_channel_list),
        backbone_feature_sizes=[list(s) for s in feature_sizes(cfg)],
        fpn_hidden_size=cfg.d_model,
        fpn_top_down_levels=list(cfg.fpn_top_down_levels),
        num_feature_levels=n_stages - cfg.scalp,
        attn_implementation=ATTN_IMPLEMENTATION,
    )


def prompt_encoder_config(cfg: Sam2Config) -> Sam2PromptEncoderConfig:
    return Sam2PromptEncoderConfig(
        hidden_size=cfg.d_model,
        image_size=cfg.image_size,
        patch_size=BACKBONE_STRIDE,
        mask_input_channels=PROMPT_MASK_IN_CHANS,
    )


def mask_decoder_config(cfg: Sam2Config) -> Sam2MaskDecoderConfig:
    return Sam2MaskDecoderConfig(
        hidden_size=cfg.d_model,
        mlp_dim=DECODER_MLP_DIM,
        num_hidden_layers=DECODER_DEPTH,
        num_attention_heads=DECODER_NUM_HEADS,
        attention_downsample_rate=DECODER_ATTENTION_DOWNSAMPLE,
        num_multimask_outputs=NUM_MULTIMASK_OUTPUTS,
        iou_head_depth=IOU_HEAD_DEPTH,
        iou_head_hidden_dim=IOU_HEAD_HIDDEN_DIM,
        dynamic_multimask_via_stability=cfg.dynamic_multimask_via_stability,
        dynamic_multimask_stability_delta=cfg.dynamic_multimask_stability_delta,
        dynamic_multimask_stability_thresh=cfg.dynamic_multimask_stability_thresh,
        attn_implementation=ATTN_IMPLEMENTATION,
    )


def memory_config(cfg: Sam2Config) -> Sam2VideoConfig:
    """Memory attention + memory encoder settings (the video model's other sub-configs are unused)."""
    grid = cfg.image_size // BACKBONE_STRIDE
    return Sam2VideoConfig(
        image_size=cfg.image_size,
        num_maskmem=cfg.num_maskmem,
        memory_attention_hidden_size=cfg.d_model,
        memory_attention_num_layers=cfg.mem_attn_num_layers,
        memory_attention_num_attention_heads=cfg.mem_attn_num_heads,
        memory_attention_downsample_rate=1,
        memory_attention_feed_forward_hidden_size=cfg.mem_attn_dim_feedforward,
        memory_attention_feed_forward_hidden_act="relu",
        memory_attention_dropout=cfg.mem_attn_dropout,
        memory_attention_rope_dropout=cfg.mem_attn_dropout,
        # Meta's RoPEAttention recomputes its table for the actual token grid whatever the yaml's feat_sizes
        # (Hiera-L says 32x32, the features are 64x64), so the RoPE grid is the real one.
        memory_attention_rope_feat_sizes=[grid, grid],
        rope_parameters={"rope_type": "axial", "rope_theta": cfg.mem_attn_rope_theta},
        memory_encoder_hidden_size=cfg.d_model,
        memory_encoder_output_channels=cfg.mem_dim,
        mask_downsampler_embed_dim=cfg.d_model,
        mask_downsampler_kernel_size=cfg.mask_downsampler_kernel_size,
        mask_downsampler_stride=cfg.mask_downsampler_stride,
        mask_downsampler_padding=cfg.mask_downsampler_padding,
        mask_downsampler_total_stride=BACKBONE_STRIDE,
        memory_fuser_num_layers=cfg.fuser_num_layers,
        memory_fuser_embed_dim=cfg.d_model,
        memory_fuser_intermediate_dim=4 * cfg.d_model,
        memory_fuser_kernel_size=cfg.fuser_kernel_size,
        memory_fuser_padding=cfg.fuser_padding,
        memory_fuser_layer_scale_init_value=cfg.fuser_layer_scale_init_value,
        attn_implementation=ATTN_IMPLEMENTATION,
    )


class MemoryAttention(Sam2VideoMemoryAttention):
    """transformers' SAM-2 memory attention with the cross-attention key/value width set to the memory width.

    Args:
        config: the video config from :func:`memory_config`.
        kv_in_dim: width of the memory tokens (Meta's ``cross_attention.kv_in_dim`` = memory encoder ``out_dim``).

    ``forward(current_vision_features [HW,B,C], memory [M,B,kv], current_vision_position_embeddings [HW,B,C],
    memory_posision_embeddings [M,B,kv])`` -> ``[1, B, HW, C]`` (see :meth:`Sam2Model.condition_on_memory`).
    """

    def __init__(self, config: Sam2VideoConfig, kv_in_dim: int) -> None:
        super().__init__(config)
        for layer in self.layers:
            # The parent builds kv_in_dim=64 (transformers' hard-coded Hiera-L width); rebuild with the real one.
            layer.cross_attn_image = Sam2VideoRoPEAttention(config, kv_in_dim=kv_in_dim, rope_k_repeat=True)


class MaskDecoder(Sam2MaskDecoder):
    """transformers' SAM-2 mask decoder that leaves the dynamic multimask choice to the caller.

    With ``multimask_output=False`` in eval mode (and the dynamic fallback configured) the parent passes all
    four tokens' logits/IoUs through ``_dynamic_multimask_via_stability`` and keeps only the pick. Here that
    hook returns them unchanged, so ``forward`` yields ``[B, P, 4, h, w]`` masks and ``[B, P, 4]`` IoUs; the
    caller applies :meth:`choose` (the parent's rule) and can report the stability score and the branch.
    In train mode the parent returns token 0 only (``[B, P, 1, h, w]``), exactly as Meta's decoder does.
    """

    def _dynamic_multimask_via_stability(self, all_mask_logits: torch.Tensor,
                                         all_iou_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return all_mask_logits, all_iou_scores

    def choose(self, all_mask_logits: torch.Tensor, all_iou_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """transformers' (= Meta's) dynamic multimask rule: token 0 if stable, else the best of tokens 1-3.

        Args: all_mask_logits ``[B, P, 4, h, w]``, all_iou_scores ``[B, P, 4]``.
        Returns: logits ``[B, P, 1, h, w]``, IoU ``[B, P, 1]``.
        """
        return super()._dynamic_multimask_via_stability(all_mask_logits, all_iou_scores)

    def stability(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """Stability score of ``[..., h, w]`` logits: area(x > delta) / area(x > -delta); shape ``[...]``."""
        return self._get_stability_scores(mask_logits)


class MetaMLP(nn.Module):
    """Meta's SAM-2 ``MLP`` parameter layout (``layers.{i}`` Linear). A weight container only: it holds
    ``obj_ptr_proj``, a module of SAM2Base that GLUS never runs but whose weights every released checkpoint has."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims, dims[1:] + [output_dim]))
