"""What trains, and how: the recipe's trainable set and peft LoRA on the LLaMA decoder (spec section 5).

:func:`apply_lora` wraps a :class:`~glus.model.mllm.GLUSMLLM` (or a model holding one, e.g. a
:class:`~glus.model.glus.GLUSModel`) with LoRA adapters on its decoder's ``q_proj`` / ``v_proj`` and leaves exactly
the parameters of :data:`TRAINABLE_PATTERNS` trainable; :func:`merge_lora` folds them back into plain weights with
the released key layout.
"""

from __future__ import annotations

import re
from typing import Sequence

from torch import nn

__all__ = ["TRAINABLE_PATTERNS", "apply_lora", "lora_target_names", "merge_lora", "set_trainable_parameters"]

# What trains in GLUS (spec section 5): LoRA adapters, lm_head, embed_tokens, mm_projector, text_hidden_fcs and
# SAM-2's mask decoder. Matched as substrings of parameter names, so they also hold under a peft wrapper.
TRAINABLE_PATTERNS: tuple[str, ...] = (
    "lora_",
    "lm_head",
    "embed_tokens",
    "mm_projector",
    "text_hidden_fcs",
    "visual_model.sam_mask_decoder",
)


def set_trainable_parameters(model: nn.Module, patterns: Sequence[str] = TRAINABLE_PATTERNS) -> list[str]:
    """Freeze every parameter of ``model`` except those whose name contains one of ``patterns``.

    Works on a :class:`GLUSMLLM`, on one with SAM-2 attached, and on their peft wrappers. The CLIP tower is not
    a registered sub-module and stays frozen.

    Returns:
        The names of the trainable parameters.
    """
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(any(p in name for p in patterns))
        if param.requires_grad:
            trainable.append(name)
    return trainable


def lora_target_names(model: nn.Module, target_modules: Sequence[str] = ("q_proj", "v_proj")) -> list[str]:
    """Full names of the LLaMA decoder linears that get LoRA (as the released ``find_linear_layers``: never
    SAM-2, CLIP, ``mm_projector`` or ``text_hidden_fcs``, although SAM-2 also has ``q_proj`` / ``v_proj``)."""
    leaf = "|".join(re.escape(t) for t in target_modules)
    pattern = re.compile(rf"(.*\.)?model\.layers\.\d+\.self_attn\.({leaf})")
    excluded = ("visual_model", "vision_tower", "mm_projector", "text_hidden_fcs")
    return sorted(
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and pattern.fullmatch(name) and not any(x in name for x in excluded)
    )


def apply_lora(
    mllm: nn.Module,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
    trainable_patterns: Sequence[str] = TRAINABLE_PATTERNS,
) -> nn.Module:
    """Wrap ``mllm`` (a :class:`GLUSMLLM` or a model holding one) with peft LoRA adapters on the LLaMA decoder's
    ``target_modules`` (GLUS: q_proj, v_proj; see :func:`lora_target_names`) and set the trainable parameters
    (spec section 5).

    Returns:
        The peft model; attribute access (``encode_frames_for_llm`` ...) reaches the wrapped :class:`GLUSMLLM`.
        Use :func:`merge_lora` to get a plain :class:`GLUSMLLM` with the released key layout back.
    """
    from peft import LoraConfig, get_peft_model

    targets = lora_target_names(mllm, target_modules)
    if not targets:
        raise ValueError(f"no LLaMA decoder linear named {', '.join(target_modules)} in {type(mllm).__name__}")
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", target_modules=targets)
    peft_model = get_peft_model(mllm, cfg)
    set_trainable_parameters(peft_model, trainable_patterns)
    return peft_model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold LoRA adapters into the base weights and return the unwrapped model (a :class:`GLUSMLLM`, or whatever
    :func:`apply_lora` wrapped), whose keys are again the released ones. A model without adapters is returned as is."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
