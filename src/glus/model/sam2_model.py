"""The SAM-2 side of GLUS (``model.visual_model``): frame features, memory-conditioned decoding of a [SEG]
prompt, and the memory written for later frames.

What it computes (GLUS-video/GLUS ``get_visual_embs`` + ``evaluate``, SAM 2.0 as ``build_sam2`` makes it):

1. :meth:`Sam2Model.encode_image`: Hiera + FPN on the 1024x1024 frame -> features at S/4, S/8, S/16; the two
   high-resolution levels go through the mask decoder's ``conv_s0`` / ``conv_s1``. Computed once per frame and
   shared by every expression of the video.
2. :meth:`Sam2Model.decode`, per expression: the S/16 features get ``no_mem_embed`` added when the expression's
   memory bank offers nothing, otherwise memory attention over the selected memories (:mod:`memory_bank`) with
   their raw ``maskmem_pos_enc`` (no temporal encoding, no object pointers). The mask decoder runs with the
   [SEG] embedding as the only sparse token and ``no_mask_embed`` as the dense prompt, ``multimask_output=False``;
   in eval mode the single-mask token is kept only if its stability >= 0.98 (delta 0.05), else the best of the
   three multimask tokens by predicted IoU. Low-res logits (S/4) are resized bilinearly to the frame size.
3. The new memory: the memory encoder on the *memory-conditioned* S/16 features and the low-res logits resized
   to SxS, through ``sigmoid(x) * 20 - 10``; stored (detached) in the bank under the current step.

The modules are transformers' SAM-2 modules (:mod:`sam2_modules`); ``state_dict()`` / ``load_state_dict()`` use
Meta's upstream names (:mod:`sam2_keys`), so the GLUS model holding this as ``model.visual_model`` has exactly
the released checkpoint's layout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers.models.sam2.modeling_sam2 import Sam2PromptEncoder, Sam2VisionModel
from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoMemoryEncoder

from glus.config import Sam2Config
from glus.model.memory_bank import MemoryBank, oldest_needed_step
from glus.model.sam2_keys import FuserGammaCompat, Sam2KeyMap, apply_fuser_gamma_compat
from glus.model.sam2_modules import (
    BACKBONE_STRIDE,
    MaskDecoder,
    MemoryAttention,
    MetaMLP,
    feature_sizes,
    mask_decoder_config,
    memory_config,
    prompt_encoder_config,
    vision_config,
)

# ImageNet statistics used by SAM2Transforms (torchvision Normalize after ToTensor's /255).
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


def preprocess_frame(frame: np.ndarray | torch.Tensor, image_size: int = 1024) -> torch.Tensor:
    """SAM-2 input of one RGB frame, exactly as GLUS's ``SAM2Transforms`` makes it.

    ``ToTensor`` (uint8 -> float32 / 255), ``Resize((S, S))`` on the tensor (bilinear, antialias, aspect ratio
    not kept), ``Normalize`` with ImageNet mean/std.

    Args:
        frame: ``[H, W, 3]`` uint8 RGB (numpy or CPU tensor).
        image_size: S.
    Returns:
        ``[3, S, S]`` float32 on the frame's device.
    """
    x = torch.as_tensor(frame)
    if x.dtype != torch.uint8 or x.dim() != 3 or x.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 RGB frame, got {tuple(x.shape)} {x.dtype}")
    x = x.permute(2, 0, 1).contiguous().to(torch.float32).div(255)
    x = F.interpolate(x[None], size=(image_size, image_size), mode="bilinear", align_corners=False,
                      antialias=True)[0]
    mean = torch.tensor(IMAGE_MEAN, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    std = torch.tensor(IMAGE_STD, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    return (x - mean) / std


@dataclass
class Sam2ImageFeatures:
    """Backbone features of F frames (before any memory), cacheable and shared by all expressions.

    Attributes:
        image_embed: ``[F, C, S/16, S/16]`` top FPN level (C = d_model).
        image_pos: ``[F, C, S/16, S/16]`` its sine position encoding.
        high_res: ``([F, C/8, S/4, S/4], [F, C/4, S/8, S/8])`` FPN levels 0 and 1 after ``conv_s0`` / ``conv_s1``.
    """

    image_embed: torch.Tensor
    image_pos: torch.Tensor
    high_res: tuple[torch.Tensor, torch.Tensor]

    def __len__(self) -> int:
        return self.image_embed.shape[0]

    def frame(self, index: int) -> Sam2ImageFeatures:
        """The features of one frame (batch dimension kept: F = 1)."""
        sl = slice(index, index + 1 if index != -1 else None)
        return Sam2ImageFeatures(self.image_embed[sl], self.image_pos[sl], (self.high_res[0][sl], self.high_res[1][sl]))

    def to(self, device: torch.device | str) -> Sam2ImageFeatures:
        return Sam2ImageFeatures(self.image_embed.to(device), self.image_pos.to(device),
                                 (self.high_res[0].to(device), self.high_res[1].to(device)))


@dataclass
class Sam2DecodeOutput:
    """What :meth:`Sam2Model.decode` returns for B entries (expressions).

    Attributes:
        low_res_logits: ``[B, 1, S/4, S/4]`` mask logits of the chosen token.
        logits: ``[B, 1, H, W]`` float32, ``low_res_logits`` resized bilinearly to ``output_size``; mask = logits > 0.
        iou: ``[B]`` predicted IoU of the chosen token.
        all_iou: ``[B, T]`` predicted IoU of every token the decoder returned (T = 4 in eval mode, 1 in train mode).
        object_score: ``[B]`` object-presence logit.
        stability: ``[B]`` stability score of the single-mask token (token 0).
        token_index: ``[B]`` long, the token used: 0 = single mask (stable, or train mode), 1-3 = the multimask
            fallback.
        memory_steps: per entry, the memory steps attended to, in concatenation order (empty: ``no_mem_embed``).
        conditioned_embed: ``[B, C, S/16, S/16]`` the memory-conditioned features the decoder (and the memory
            encoder) saw.
    """

    low_res_logits: torch.Tensor
    logits: torch.Tensor
    iou: torch.Tensor
    all_iou: torch.Tensor
    object_score: torch.Tensor
    stability: torch.Tensor
    token_index: torch.Tensor
    memory_steps: list[tuple[int, ...]]
    conditioned_embed: torch.Tensor

    @property
    def used_multimask(self) -> torch.Tensor:
        """``[B]`` bool: the dynamic fallback to a multimask token was taken."""
        return self.token_index > 0


@dataclass
class Sam2LoadReport:
    """Result of :meth:`Sam2Model.load_meta_state_dict` (Meta names, without prefix)."""

    missing_keys: list[str]
    unexpected_keys: list[str]
    fuser_gamma_replaced: list[str]


class Sam2Model(nn.Module):
    """SAM-2 as GLUS uses it; see the module docstring. Build from a :class:`Sam2Config`.

    Submodules (Meta's names at top level): ``image_encoder`` (Hiera + FPN), ``sam_prompt_encoder``,
    ``sam_mask_decoder``, ``memory_attention``, ``memory_encoder``; parameters ``no_mem_embed`` (used) and
    ``maskmem_tpos_enc``, ``no_mem_pos_enc``, ``no_obj_ptr``, ``mask_downsample``, ``obj_ptr_proj`` (in every
    released checkpoint, never used by GLUS).

    Train/eval mode follows PyTorch: in train mode the memory attention's dropout is active and the mask decoder
    returns the single-mask token (no dynamic fallback), as in Meta's code.
    """

    def __init__(self, config: Sam2Config) -> None:
        super().__init__()
        _check_supported(config)
        self.config = config
        c, mem_dim = config.d_model, config.mem_dim
        mem_cfg = memory_config(config)
        # Registration order follows Meta's SAM2Base.
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(config.num_maskmem, 1, 1, mem_dim))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, c))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, c))
        if config.pred_obj_scores and config.use_obj_ptrs_in_encoder:
            self.no_obj_ptr = nn.Parameter(torch.zeros(1, c))
        self.image_encoder = Sam2VisionModel(vision_config(config))
        if config.use_obj_ptrs_in_encoder:
            self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.memory_attention = MemoryAttention(mem_cfg, kv_in_dim=mem_dim)
        self.memory_encoder = Sam2VideoMemoryEncoder(mem_cfg)
        self.sam_prompt_encoder = Sam2PromptEncoder(prompt_encoder_config(config))
        self.sam_mask_decoder = MaskDecoder(mask_decoder_config(config))
        if config.use_obj_ptrs_in_encoder:
            self.obj_ptr_proj = MetaMLP(c, c, c, 3) if config.use_mlp_for_obj_ptr_proj else nn.Linear(c, c)
        for p in (self.maskmem_tpos_enc, self.no_mem_embed, self.no_mem_pos_enc, getattr(self, "no_obj_ptr", None)):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)

        hf_keys = list(nn.Module.state_dict(self).keys())
        self.key_map = Sam2KeyMap(hf_keys, num_downsampler_layers=len(self.memory_encoder.mask_downsampler.layers),
                                  num_point_embeddings=self.sam_prompt_encoder.point_embed.num_embeddings)
        self.key_map.install(self)

    # ---------------------------------------------------------------------------------------------------------
    @property
    def feat_sizes(self) -> tuple[tuple[int, int], ...]:
        """``((S/4, S/4), (S/8, S/8), (S/16, S/16))``."""
        return feature_sizes(self.config)

    def preprocess(self, frame: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``[H, W, 3]`` uint8 RGB -> ``[3, S, S]`` float32 (:func:`preprocess_frame`)."""
        return preprocess_frame(frame, self.config.image_size)

    def encode_image(self, pixels: torch.Tensor, *, grad: bool = False) -> Sam2ImageFeatures:
        """Backbone features of ``pixels [F, 3, S, S]`` (see :class:`Sam2ImageFeatures`).

        Args:
            grad: track gradients (the released model computes image features under no_grad).
        """
        s = self.config.image_size
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (3, s, s):
            raise ValueError(f"expected pixels [F, 3, {s}, {s}], got {tuple(pixels.shape)}")
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            out = self.image_encoder(pixel_values=pixels)
            levels, pos = out.fpn_hidden_states, out.fpn_position_encoding  # high -> low resolution
            high_res = (self.sam_mask_decoder.conv_s0(levels[0]), self.sam_mask_decoder.conv_s1(levels[1]))
        return Sam2ImageFeatures(image_embed=levels[-1], image_pos=pos[-1], high_res=high_res)

    def click_prompt(self, points: torch.Tensor) -> torch.Tensor:
        """``[B, 1, C]`` prompt tokens of one positive click each, at ``points [B, 2]`` (x, y in model-input pixels).

        SAM-2's own point embedding (the prompt encoder's random-Fourier encoding of the click plus its
        "positive point" embedding), in the one-token form the ``[SEG]`` prompt takes: SAM-2 pads a click prompt
        with a "not a point" token when no box comes with it, a single token needs none. Training SAM-2 on clicks
        (as Meta trains it) before the ``[SEG]`` stage is what a model trained from scratch needs; see
        ``TrainConfig.click_steps``.
        """
        if points.dim() != 2 or points.shape[1] != 2:
            raise ValueError(f"points must be [B, 2] (x, y), got {tuple(points.shape)}")
        encoder = self.sam_prompt_encoder
        s = self.config.image_size
        where = encoder.shared_embedding((points + 0.5)[:, None, None, :], (s, s))  # [B, 1, 1, C]
        return (where + encoder.point_embed.weight[1])[:, 0]

    def dense_positional_encoding(self) -> torch.Tensor:
        """``[1, C, S/16, S/16]``: the prompt encoder's random-Fourier encoding of the feature grid (Meta's
        ``get_dense_pe``)."""
        h, w = self.feat_sizes[-1]
        pe_layer = self.sam_prompt_encoder.shared_embedding
        table = pe_layer.positional_embedding
        grid = torch.ones((h, w), device=table.device, dtype=table.dtype)
        y = (grid.cumsum(dim=0) - 0.5) / h
        x = (grid.cumsum(dim=1) - 0.5) / w
        return pe_layer(torch.stack([x, y], dim=-1)).permute(2, 0, 1).unsqueeze(0)

    # ---------------------------------------------------------------------------------------------------------
    def condition_on_memory(self, image_embed: torch.Tensor, image_pos: torch.Tensor,
                            banks: Sequence[MemoryBank] | None, step: int, stride: int,
                            ) -> tuple[torch.Tensor, list[tuple[int, ...]]]:
        """Memory-conditioned S/16 features of B entries.

        Args:
            image_embed, image_pos: ``[B, C, h, w]``.
            banks: one bank per entry, or None (no memory bank at all: every entry gets ``no_mem_embed``).
            step, stride: the current step within the pass and the memory stride (:func:`memory_steps`).
        Returns:
            ``[B, C, h, w]`` and, per entry, the memory steps used. Entries selecting the same steps share one
            memory-attention call.
        """
        b, c, h, w = image_embed.shape
        selections = [tuple(bank.select(step, stride, self.config.num_maskmem)) for bank in banks] if banks \
            else [()] * b
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, steps in enumerate(selections):
            groups.setdefault(steps, []).append(i)
        pieces: list[torch.Tensor | None] = [None] * b
        for steps, idx in groups.items():
            feats = image_embed[idx]
            if not steps:
                out = feats + self.no_mem_embed.view(1, c, 1, 1)
            else:
                gathered = [banks[i].gather(list(steps)) for i in idx]
                memory = torch.stack([g[0] for g in gathered], dim=1).to(feats.dtype)  # [M, b, C_mem]
                memory_pos = torch.stack([g[1] for g in gathered], dim=1).to(feats.dtype)
                out = self.memory_attention(
                    current_vision_features=feats.flatten(2).permute(2, 0, 1),  # [HW, b, C]
                    memory=memory,
                    current_vision_position_embeddings=image_pos[idx].flatten(2).permute(2, 0, 1),
                    memory_posision_embeddings=memory_pos,
                    num_object_pointer_tokens=0,
                )  # [1, b, HW, C]
                out = out[0].transpose(1, 2).reshape(len(idx), c, h, w)
            for j, i in enumerate(idx):
                pieces[i] = out[j:j + 1]
        return torch.cat(pieces, dim=0), selections

    def decode(self, features: Sam2ImageFeatures, prompt_embedding: torch.Tensor,
               memory: MemoryBank | Sequence[MemoryBank] | None, step: int, stride: int,
               output_size: tuple[int, int], *, write_memory: bool = True, memory_grad: bool = False,
               ) -> Sam2DecodeOutput:
        """Mask of B [SEG] prompts on one frame (or one frame each), and their new memories.

        Args:
            features: from :meth:`encode_image`, F = 1 (one frame shared by all entries) or F = B.
            prompt_embedding: ``[B, 1, C]`` the [SEG] embeddings (``text_hidden_fcs`` output).
            memory: one :class:`MemoryBank` per entry (a single bank when B = 1), or None to run without a memory
                bank (``no_mem_embed`` always, nothing written).
            step: step index of this frame within the pass (memories are read for it and written under it).
            stride: memory stride r (1 in training, 3 at inference).
            output_size: ``(H, W)`` of the full-resolution logits (the original frame size).
            write_memory: encode and store this frame's memory in each bank.
            memory_grad: run the memory attention with gradients (default: under no_grad, as the released code;
                the mask decoder always follows the ambient grad mode). Stored memories are always detached.
        """
        b = prompt_embedding.shape[0]
        if prompt_embedding.dim() != 3 or prompt_embedding.shape[1:] != (1, self.config.d_model):
            raise ValueError(f"prompt_embedding must be [B, 1, {self.config.d_model}], "
                             f"got {tuple(prompt_embedding.shape)}")
        if len(features) not in (1, b):
            raise ValueError(f"features hold {len(features)} frames for {b} prompts (need 1 or {b})")
        banks = _as_banks(memory, b)

        def per_entry(x: torch.Tensor) -> torch.Tensor:
            return x.expand(b, *x.shape[1:]) if x.shape[0] != b else x

        with torch.set_grad_enabled(memory_grad and torch.is_grad_enabled()):
            conditioned, selections = self.condition_on_memory(
                per_entry(features.image_embed), per_entry(features.image_pos), banks, step, stride)

        h, w = self.feat_sizes[-1]
        _, dense = self.sam_prompt_encoder(None, None, None, None)  # no_mask_embed [1, C, h, w]
        masks, iou, _, object_score = self.sam_mask_decoder(
            image_embeddings=conditioned,
            image_positional_embeddings=self.dense_positional_encoding().expand(b, -1, h, w),
            sparse_prompt_embeddings=prompt_embedding.unsqueeze(1).to(conditioned.dtype),  # [B, P=1, N=1, C]
            dense_prompt_embeddings=dense,
            multimask_output=False,
            high_resolution_features=[per_entry(features.high_res[0]), per_entry(features.high_res[1])],
        )  # masks [B, 1, T, S/4, S/4], iou [B, 1, T], object_score [B, 1, 1]
        with torch.no_grad():
            stability = self.sam_mask_decoder.stability(masks[:, 0, 0])
        if masks.shape[2] > 1:
            chosen, chosen_iou = self.sam_mask_decoder.choose(masks, iou)
            stable = stability >= self.config.dynamic_multimask_stability_thresh
            token = torch.where(stable, 0, 1 + iou[:, 0, 1:].argmax(dim=-1))
        else:
            chosen, chosen_iou = masks, iou
            token = torch.zeros(b, dtype=torch.long, device=masks.device)
        low_res = chosen[:, 0]  # [B, 1, S/4, S/4]
        logits = F.interpolate(low_res.float(), size=tuple(output_size), mode="bilinear", align_corners=False)

        if banks is not None and write_memory:
            self.write_memory(banks, step, conditioned, low_res)
            # Memories no later frame can select are dropped, so a bank stays small however long the video.
            keep_from = oldest_needed_step(step + 1, stride, self.config.num_maskmem)
            for bank in banks:
                bank.forget_before(keep_from)
        return Sam2DecodeOutput(
            low_res_logits=low_res, logits=logits, iou=chosen_iou[:, 0, 0], all_iou=iou[:, 0],
            object_score=object_score[:, 0, 0], stability=stability, token_index=token.long(),
            memory_steps=selections, conditioned_embed=conditioned)

    @torch.no_grad()
    def encode_memory(self, conditioned: torch.Tensor,
                      low_res_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory of B entries (Meta's ``_encode_new_memory`` with ``is_mask_from_pts=False``).

        Args:
            conditioned: ``[B, C, S/16, S/16]`` memory-conditioned features.
            low_res_logits: ``[B, 1, S/4, S/4]`` chosen mask logits.
        Returns:
            features ``[B, C_mem, S/16, S/16]`` and position encoding, same shape.
        """
        s = self.config.image_size
        high = F.interpolate(low_res_logits.float(), size=(s, s), mode="bilinear", align_corners=False)
        high = high.to(low_res_logits.dtype)
        cfg = self.config
        mask_for_mem = torch.sigmoid(high) * cfg.sigmoid_scale_for_mem_enc + cfg.sigmoid_bias_for_mem_enc
        return self.memory_encoder(conditioned, mask_for_mem.to(conditioned.dtype))

    def write_memory(self, banks: Sequence[MemoryBank], step: int, conditioned: torch.Tensor,
                     low_res_logits: torch.Tensor) -> None:
        """Encode and store the memory of every entry under ``step``."""
        features, pos_enc = self.encode_memory(conditioned.detach(), low_res_logits.detach())
        for i, bank in enumerate(banks):
            bank.add(step, features[i], pos_enc[i])

    # ---------------------------------------------------------------------------------------------------------
    def load_meta_state_dict(self, state_dict: Mapping[str, torch.Tensor], *, compat: FuserGammaCompat = "official",
                             strict: bool = True, prefix: str = "") -> Sam2LoadReport:
        """Load SAM-2 weights stored under Meta's names (a SAM-2 ``{"model": ...}`` dict, or a GLUS checkpoint's
        ``model.visual_model.*`` tensors with ``prefix="model.visual_model."``).

        Args:
            compat: the fuser layer scales ``memory_encoder.fuser.layers.*.gamma``: ``"official"`` sets them to
                their init value (1e-6) whatever the file holds, as the authors' loader does (see
                :func:`apply_fuser_gamma_compat`); ``"stored"`` loads the file's values.
            strict: raise on missing or unexpected keys (shape mismatches always raise).
        Returns:
            missing/unexpected keys (Meta names) and the gamma keys set by the compat rule.
        """
        sd = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if compat == "official":
            # also when the file lacks them: "official" means the init value, not whatever is loaded now
            for i in range(self.config.fuser_num_layers):
                sd.setdefault(f"memory_encoder.fuser.layers.{i}.gamma", torch.empty(self.config.d_model))
        replaced = apply_fuser_gamma_compat(sd, compat, self.config.fuser_layer_scale_init_value)
        own = self.state_dict()
        bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
               for k, v in sd.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
        if bad:
            raise ValueError(f"SAM-2 weights do not fit {len(bad)} tensor(s): " + "; ".join(bad[:5]))
        result = self.load_state_dict(sd, strict=strict)
        return Sam2LoadReport(missing_keys=list(result.missing_keys), unexpected_keys=list(result.unexpected_keys),
                              fuser_gamma_replaced=replaced)


def _as_banks(memory: MemoryBank | Sequence[MemoryBank] | None, b: int) -> list[MemoryBank] | None:
    if memory is None:
        return None
    banks = [memory] if isinstance(memory, MemoryBank) else list(memory)
    if len(banks) != b or not all(isinstance(x, MemoryBank) for x in banks):
        raise ValueError(f"need one MemoryBank per prompt ({b}), got {len(banks)}")
    if len({id(x) for x in banks}) != b:
        raise ValueError("each prompt needs its own MemoryBank")
    return banks


def _check_supported(cfg: Sam2Config) -> None:
    """Settings transformers' SAM-2 modules (and GLUS's three-level feature use) implement."""
    problems = []
    if len(cfg.stages) != 4 or cfg.scalp != 1:
        problems.append("a 4-stage Hiera with scalp=1")
    if cfg.image_size % (BACKBONE_STRIDE * 8) != 0:
        problems.append("image_size divisible by 128")
    if cfg.fpn_interp_model != "nearest":
        problems.append("fpn_interp_model='nearest'")
    if not (cfg.use_high_res_features_in_sam and cfg.iou_prediction_use_sigmoid and cfg.pred_obj_scores
            and cfg.pred_obj_scores_mlp):
        problems.append("high-res features, sigmoid IoU and an MLP object-score head")
    if problems:
        raise ValueError("unsupported SAM-2 config; glus needs " + ", ".join(problems))
