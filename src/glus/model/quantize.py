"""4-/8-bit loading of the LLaMA decoder with bitsandbytes (CUDA only), as the released inference's
``--load_in_4bit`` / ``--load_in_8bit``; SAM-2, CLIP and the heads keep full precision."""

from __future__ import annotations

import importlib.util
import logging

import torch
from torch import nn

from glus.errors import GLUSError
from glus.model.mllm import GLUSMLLM

logger = logging.getLogger(__name__)

__all__ = ["check_quantization", "quantize_llm", "replace_decoder_linears_with_bnb"]


def check_quantization(bits: int, device: torch.device | str) -> torch.device:
    """Fail early, in one line, where 4-/8-bit loading cannot work (before any weights are read)."""
    if bits not in (4, 8):
        raise GLUSError(f"quantisation must be 4 or 8 bits, not {bits}")
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise GLUSError(f"{bits}-bit loading needs a CUDA GPU (bitsandbytes); device {device} cannot be used")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise GLUSError(f"{bits}-bit loading needs bitsandbytes: pip install 'glus[quant]'")
    return device


def quantize_llm(
    mllm: GLUSMLLM,
    bits: int,
    device: torch.device | str = "cuda",
    compute_dtype: torch.dtype = torch.float16,
) -> GLUSMLLM:
    """Load the LLaMA decoder layers in 4-bit (NF4, double quantisation) or 8-bit (LLM.int8) with bitsandbytes.

    As the released inference (``--load_in_4bit`` / ``--load_in_8bit``) does, only the decoder's linear layers
    are quantised; embeddings, ``lm_head``, ``mm_projector``, ``text_hidden_fcs``, CLIP and SAM-2 stay in
    ``compute_dtype``. The model is moved to ``device``.

    Raises:
        GLUSError: ``bits`` is not 4 or 8, ``device`` is not an available CUDA device, or bitsandbytes is missing.
    """
    device = check_quantization(bits, device)
    mllm.to(dtype=compute_dtype)
    replace_decoder_linears_with_bnb(mllm, bits, compute_dtype)
    # Moving bitsandbytes parameters to CUDA is what quantises them.
    mllm.to(device)
    logger.info("LLaMA decoder quantised to %d bits on %s", bits, device)
    return mllm


def replace_decoder_linears_with_bnb(mllm: GLUSMLLM, bits: int, compute_dtype: torch.dtype) -> list[str]:
    """Swap every ``nn.Linear`` of the LLaMA decoder layers for a bitsandbytes 4-bit (NF4, double quantisation)
    or 8-bit (LLM.int8, threshold 6) layer holding the same weights, not yet quantised: moving the model to a
    device afterwards quantises them (what :func:`quantize_llm` does). Returns the replaced names."""
    import bitsandbytes as bnb

    replaced = []
    for i, layer in enumerate(mllm.model.layers):
        for group_name, parent in (("self_attn", layer.self_attn), ("mlp", layer.mlp)):
            for name, child in list(parent.named_children()):
                if not isinstance(child, nn.Linear):
                    continue
                weight, has_bias = child.weight.data, child.bias is not None
                if bits == 4:
                    new = bnb.nn.Linear4bit(
                        child.in_features, child.out_features, bias=has_bias,
                        compute_dtype=compute_dtype, compress_statistics=True, quant_type="nf4",
                    )
                    new.weight = bnb.nn.Params4bit(
                        weight, requires_grad=False, compress_statistics=True, quant_type="nf4"
                    )
                else:
                    new = bnb.nn.Linear8bitLt(
                        child.in_features, child.out_features, bias=has_bias, has_fp16_weights=False, threshold=6.0
                    )
                    new.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
                if has_bias:
                    new.bias = nn.Parameter(child.bias.data, requires_grad=False)
                setattr(parent, name, new)
                replaced.append(f"model.layers.{i}.{group_name}.{name}")
    return replaced
