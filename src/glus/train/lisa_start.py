"""The authors' starting point: a LISA checkpoint for the LLM and Meta's SAM-2 weights for the segmenter.

``scripts/train_glus_s.sh`` starts ``train_ds.py`` from ``LISA-7B-v1`` (``--version``: LLaVA-7B with LISA's
``[SEG]`` training, its ``visual_model`` being SAM-1) and ``sam2_hiera_large.pt`` (``--vision_pretrained``).
``train_ds.py`` then

* keeps the LISA checkpoint's LLM: ``embed_tokens``, the decoder layers, ``norm``, ``lm_head``, ``mm_projector``
  (its SAM-1 ``visual_model.*`` tensors go unused);
* adds ``[SEG]`` and then ``<im_start>`` / ``<im_end>`` to the tokenizer where they are missing and grows
  ``embed_tokens`` / ``lm_head`` to the new vocabulary, the new rows drawn from N(0, 0.02) (transformers'
  ``resize_token_embeddings``);
* builds SAM-2 from the Meta checkpoint, loaded strictly (fuser ``gamma`` as stored), and ``text_hidden_fcs``
  fresh.

:func:`build_from_lisa` does the same and returns a :class:`~glus.model.glus.GLUSModel` with its tokenizer.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from glus.errors import GLUSError
from glus.fileio import read_json_object
from glus.model.checkpoint import VISUAL_PREFIX, released_config, resolve_tower_path
from glus.model.checkpoint_io import describe_key_mismatch, drop_non_weights, load_state_dict, resolve_checkpoint
from glus.model.glus import GLUSModel
from glus.model.vision_tower import load_vision_tower
from glus.tokenizer import GLUSTokenizer

logger = logging.getLogger(__name__)

__all__ = ["build_from_lisa"]

_RESIZED = ("model.embed_tokens.weight", "lm_head.weight")  # grown to the tokenizer with new tokens
_FRESH = ("model.text_hidden_fcs.",)  # rebuilt by train_ds.py whatever the checkpoint holds


def build_from_lisa(model: str | Path, sam2_checkpoint: str | Path, *, vision_tower: str | Path | None = None,
                    sam2_config: Any = None, init_std: float = 0.02) -> tuple[GLUSModel, GLUSTokenizer]:
    """A GLUS model started as the authors start training (see the module docstring).

    Args:
        model: a LISA (or LLaVA-layout) checkpoint folder or hub id, tokenizer inside.
        sam2_checkpoint: Meta's SAM-2 checkpoint (``{"model": state_dict}``, e.g. ``sam2_hiera_large.pt``).
        vision_tower: CLIP folder or id (default: the one the checkpoint's config names).
        sam2_config: the SAM-2 yaml or :class:`~glus.config.Sam2Config` matching ``sam2_checkpoint``
            (default Hiera-L).
        init_std: standard deviation of the new embedding / head rows.
    """
    folder = resolve_checkpoint(model)
    tokenizer = GLUSTokenizer.from_pretrained(folder)
    new = tokenizer.add_tokens([tokenizer.seg_token]) + tokenizer.add_tokens([tokenizer.im_start_token,
                                                                                tokenizer.im_end_token])
    raw = read_json_object(folder / "config.json", "config.json")
    tower_name = str(vision_tower or raw.get("mm_vision_tower") or raw.get("vision_tower") or "")
    if not tower_name:
        raise GLUSError("the config names no vision tower: give vision_tower", folder / "config.json")
    tower_path = str(vision_tower) if vision_tower is not None else resolve_tower_path(tower_name, folder)
    tower = load_vision_tower(tower_path, select_layer=int(raw.get("mm_vision_select_layer", -2)))
    config = released_config(folder, tower, sam2_config)
    config = replace(config, text=replace(config.text, vocab_size=len(tokenizer)))
    glus = GLUSModel(config, vision_tower=tower, clip_processor_path=tower_path)

    state = load_state_dict(folder)
    drop_non_weights(state)
    llm = {k: v for k, v in state.items() if not k.startswith(VISUAL_PREFIX) and not k.startswith(_FRESH)}
    own = {k: v for k, v in glus.state_dict().items() if not k.startswith(VISUAL_PREFIX) and not k.startswith(_FRESH)}
    missing, unexpected = sorted(set(own) - set(llm)), sorted(set(llm) - set(own))
    shapes = []
    for key, value in llm.items():
        if key not in own:
            continue
        target = own[key]
        if key in _RESIZED and value.shape[1:] == target.shape[1:] and value.shape[0] <= target.shape[0]:
            grown = torch.empty_like(target).normal_(0.0, init_std)
            grown[: value.shape[0]] = value.to(target.dtype)
            llm[key] = grown
        elif tuple(value.shape) != tuple(target.shape):
            shapes.append(f"{key} {tuple(value.shape)} vs {tuple(target.shape)}")
    problem = describe_key_mismatch(missing, unexpected, folder, shapes)
    if problem:
        raise GLUSError(problem)
    glus.load_state_dict(llm, strict=False)

    sam2_path = Path(sam2_checkpoint)
    try:
        sam = torch.load(sam2_path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise GLUSError("SAM-2 checkpoint not found", sam2_path) from None
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a file that is not a checkpoint
        raise GLUSError(f"not a readable SAM-2 checkpoint ({type(exc).__name__})", sam2_path) from None
    sam = sam.get("model", sam) if isinstance(sam, dict) else None
    if not isinstance(sam, dict):
        raise GLUSError("not a SAM-2 checkpoint ({'model': state_dict})", sam2_path)
    try:
        glus.sam2.load_meta_state_dict(sam, compat="stored", strict=True)
    except (RuntimeError, ValueError) as exc:
        raise GLUSError(f"the SAM-2 weights do not fit the SAM-2 config: {str(exc).splitlines()[0]}",
                        sam2_path) from None
    glus.materialize_rotary("cpu")
    glus.seg_token_id = tokenizer.seg_token_id
    logger.info("started from %s (LLM, %d new token(s)) and %s (SAM-2)", folder, new, sam2_path)
    return glus, tokenizer
