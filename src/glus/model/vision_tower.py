"""The frozen CLIP vision tower of GLUS and its image pre-processing (LLaVA's ``CLIPVisionTower``).

A frame goes RGB uint8 ``[H, W, 3]`` -> :func:`clip_pixel_values` (shortest edge 224, bicubic, centre crop 224,
OpenAI mean/std) -> ``[3, 224, 224]`` -> :class:`ClipVisionTower` -> the hidden state of layer ``select_layer``
(-2 in LLaVA / GLUS) without the CLS token: ``[N, num_patches, C]`` (256 x 1024 for ViT-L/14-224).

The tower is not part of a GLUS checkpoint: it is loaded from its own folder (or hub id), always frozen and in
eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

from glus.config import VisionConfig
from glus.errors import GLUSError


def clip_image_processor(name_or_path: str | Path | None = None,
                         vision: VisionConfig | None = None) -> CLIPImageProcessorPil:
    """The CLIP pre-processor of the vision tower folder, always the PIL (``slow``) implementation.

    The authors' code ran transformers 4.31's slow ``CLIPImageProcessor``; its PIL bicubic resize is what the
    released weights saw. transformers 5 switches ``CLIPImageProcessor`` to a torchvision backend when torchvision
    is installed, whose resize differs by a few grey levels, so the PIL backend is named explicitly here.

    Args:
        name_or_path: a folder holding ``preprocessor_config.json`` (or a hub id); ``None``, or a folder without
            that file, gives the defaults of ``vision``.
        vision: the tower's config, for the defaults: its ``image_size`` and ``preprocess`` (``None``: the
            openai/clip-vit-large-patch14 settings, shortest edge 224, bicubic, crop 224, OpenAI mean/std, which
            every released GLUS model uses).
    """
    folder = Path(name_or_path) if name_or_path is not None else None
    if folder is None or (folder.is_dir() and not (folder / "preprocessor_config.json").is_file()):
        return _default_processor(vision)
    try:
        return CLIPImageProcessorPil.from_pretrained(str(name_or_path))
    except (OSError, ValueError) as exc:
        raise GLUSError(f"cannot read the CLIP pre-processor config: {exc}".splitlines()[0], name_or_path) from None


def _default_processor(vision: VisionConfig | None) -> CLIPImageProcessorPil:
    """OpenAI CLIP's pre-processing (bicubic, OpenAI mean/std) at the tower's input size and ``preprocess``."""
    if vision is None:
        return CLIPImageProcessorPil()
    s = vision.image_size
    if vision.preprocess == "resize":
        return CLIPImageProcessorPil(size={"height": s, "width": s}, do_center_crop=False,
                                     crop_size={"height": s, "width": s})
    return CLIPImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s})


def clip_pixel_values(
    frames_rgb: Sequence[np.ndarray] | np.ndarray, processor: CLIPImageProcessorPil | None = None
) -> torch.Tensor:
    """Pre-process RGB frames for CLIP exactly as GLUS does (``clip_image_processor.preprocess(rgb)``).

    Args:
        frames_rgb: one ``[H, W, 3]`` uint8 RGB array or a sequence of them (sizes may differ). The official
            code reads frames with ``cv2.imread`` and converts BGR -> RGB before this step.
        processor: from :func:`clip_image_processor`; default: the OpenAI CLIP settings.

    Returns:
        ``[N, 3, S, S]`` float32 pixel values (N = 1 for a single array; S the processor's size, 224 for OpenAI's).
    """
    processor = processor or clip_image_processor()
    if isinstance(frames_rgb, np.ndarray) and frames_rgb.ndim == 3:
        frames_rgb = [frames_rgb]
    frames = list(frames_rgb)
    for frame in frames:
        if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
            raise ValueError(f"expected [H, W, 3] uint8 RGB frames, got {frame.shape} {frame.dtype}")
    out = processor.preprocess(frames, return_tensors="pt")["pixel_values"]
    return out.to(torch.float32)


class ClipVisionTower(nn.Module):
    """Frozen ``CLIPVisionModel`` returning the patch tokens of one hidden layer.

    Args:
        clip: the vision model (its parameters are frozen here).
        select_layer: index into ``hidden_states`` (embeddings first, then one entry per encoder layer);
            LLaVA's ``mm_vision_select_layer``, -2 = the input of the last encoder layer.
    """

    def __init__(self, clip: CLIPVisionModel, select_layer: int = -2) -> None:
        super().__init__()
        self.clip = clip
        self.select_layer = select_layer
        self.clip.requires_grad_(False)
        super().train(False)

    @property
    def hidden_size(self) -> int:
        return self.clip.config.hidden_size

    @property
    def num_patches(self) -> int:
        cfg = self.clip.config
        return (cfg.image_size // cfg.patch_size) ** 2

    @property
    def dtype(self) -> torch.dtype:
        return self.clip.embeddings.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.clip.embeddings.patch_embedding.weight.device

    def train(self, mode: bool = True) -> "ClipVisionTower":
        # Frozen tower: it stays in eval mode whatever the surrounding model does (as in LLaVA).
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch features of the selected layer.

        Args:
            pixel_values: ``[N, 3, S, S]`` from :func:`clip_pixel_values` (any float dtype / device).

        Returns:
            ``[N, num_patches, C]`` in the tower's dtype, CLS token dropped (LLaVA's ``"patch"`` select feature).
        """
        out = self.clip(
            pixel_values.to(device=self.device, dtype=self.dtype), output_hidden_states=True, return_dict=True
        )
        return out.hidden_states[self.select_layer][:, 1:]


def clip_vision_config(cfg: VisionConfig) -> CLIPVisionConfig:
    """The ``transformers`` config of a tower with the sizes of ``cfg``."""
    return CLIPVisionConfig(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        projection_dim=cfg.projection_dim,
        hidden_act=cfg.hidden_act,
        layer_norm_eps=cfg.layer_norm_eps,
    )


def build_vision_tower(cfg: VisionConfig) -> ClipVisionTower:
    """A randomly initialised tower with the sizes of ``cfg`` (tests, shape checks, meta-device builds, presets trained
    from scratch), its position embeddings scaled by ``cfg.random_position_scale``."""
    clip = CLIPVisionModel(clip_vision_config(cfg))
    if cfg.random_position_scale != 1.0:
        with torch.no_grad():
            clip.embeddings.position_embedding.weight.mul_(cfg.random_position_scale)
    return ClipVisionTower(clip, select_layer=cfg.select_layer)


def load_vision_tower(
    name_or_path: str | Path,
    select_layer: int = -2,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> ClipVisionTower:
    """Load a CLIP vision tower from a folder (``config.json`` + weights) or a hub id.

    Args:
        name_or_path: e.g. ``openai/clip-vit-large-patch14`` or a local folder.
        select_layer: LLaVA's ``mm_vision_select_layer``.
        dtype / device: where the tower lives (default: float32 on CPU).

    Raises:
        GLUSError: the folder / id cannot be loaded as a ``CLIPVisionModel``.
    """
    text = str(name_or_path)
    if (Path(text).is_absolute() or text.startswith(".")) and not Path(text).is_dir():
        raise GLUSError("CLIP vision tower folder not found", name_or_path)
    try:
        clip = CLIPVisionModel.from_pretrained(text, dtype=dtype or torch.float32)
    except (OSError, ValueError, EnvironmentError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GLUSError(f"cannot load the CLIP vision tower: {msg}", name_or_path) from None
    tower = ClipVisionTower(clip, select_layer=select_layer)
    if device is not None:
        tower.to(device)
    return tower
