"""Loading and saving GLUS models: the released layout and glus's own format.

Released layout (``Swindl/GLUS-S``, ``Swindl/GLUS-A``, ``Swindl/GLUS-S-partial``; the authors' tiny reference):
a transformers 4.31 ``save_pretrained`` folder (``config.json`` of a LLaVA/GLUS model, ``pytorch_model*.bin``
[+ index] or safetensors, the slow LLaMA tokenizer files), holding ``model.*``, ``lm_head.*`` and SAM-2 under
``model.visual_model.*`` with Meta's names. Not in it: the CLIP tower (``--vision-tower``, default the id the
config names) and the SAM-2 architecture (``--sam2-config``: a Meta yaml, default Hiera-L as released).
The two fuser ``gamma`` tensors follow ``compat`` (spec section 4b): ``"official"`` (default for released
checkpoints) reproduces the authors' loader, which leaves them at 1e-6; ``"stored"`` loads the file's values.

glus format (:func:`save_pretrained`): ``config.json`` (``{"format": "glus", "config": GLUSConfig}``),
``model.safetensors`` (the same keys as the released layout), the tokenizer files and ``vision_tower/`` (the CLIP
weights and pre-processor), so a saved model loads with no further arguments and round-trips bit-identically.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch

from glus.config import GLUSConfig, Sam2Config, TextConfig, VisionConfig, glus_7b
from glus.errors import GLUSError, ParameterError
from glus.fileio import atomic_write_json, read_json, read_json_object, usual_permissions
from glus.model.checkpoint_io import (describe_key_mismatch, drop_non_weights, load_state_dict, resolve_checkpoint,
                                      safetensors_os_errors, save_safetensors_atomic)
from glus.model.glus import GLUSModel
from glus.model.quantize import check_quantization, quantize_llm
from glus.model.sam2_model import Sam2Model
from glus.model.vision_tower import ClipVisionTower, load_vision_tower

logger = logging.getLogger(__name__)

Compat = Literal["official", "stored"]
FORMAT_NAME = "glus"
FORMAT_VERSION = 1
VISUAL_PREFIX = "model.visual_model."
# Names that stand for Meta's released SAM-2 Hiera-L (SAM 2.0) configuration, which every GLUS release uses.
BUILTIN_SAM2 = {"sam2_hiera_l.yaml", "sam2_hiera_l", "sam2_hiera_large", "hiera-l", "hiera_l", "large"}
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise GLUSError(f"unknown precision {dtype!r}; choose fp32, bf16 or fp16") from None


def check_compat(compat: str | None) -> Compat | None:
    """``compat`` checked: ``None`` (the default of the folder's format), ``"official"`` or ``"stored"``."""
    if compat not in (None, "official", "stored"):
        raise GLUSError(f"unknown compat {compat!r}; choose official or stored")
    return compat


def is_glus_format(folder: Path) -> bool:
    config = folder / "config.json"
    if not config.is_file():
        return False
    try:
        raw = read_json(config, "config.json")
    except GLUSError:  # unreadable: not ours; the released-layout reader reports what is wrong with it
        return False
    return isinstance(raw, dict) and raw.get("format") == FORMAT_NAME


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise GLUSError("config.json not found: not a GLUS checkpoint folder", path.parent)
    return read_json_object(path, "config.json")


def sam2_config_from_arg(sam2_config: str | Path | Sam2Config | None) -> Sam2Config:
    """A :class:`~glus.config.Sam2Config` from a Meta yaml path, or Hiera-L for ``None`` / its names; a
    :class:`~glus.config.Sam2Config` is taken as it is (e.g. a yaml's config with the dropout changed)."""
    from glus.model.sam2_yaml import sam2_config_from_yaml

    if isinstance(sam2_config, Sam2Config):
        return sam2_config
    if sam2_config is None or str(sam2_config).lower() in BUILTIN_SAM2 and not Path(str(sam2_config)).is_file():
        return glus_7b().sam2
    path = Path(sam2_config)
    if not path.is_file():
        raise GLUSError("SAM-2 config not found (give a Meta SAM-2 yaml file, or sam2_hiera_l.yaml)", path)
    return sam2_config_from_yaml(path)


def resolve_tower_path(name: str, folder: Path) -> str:
    """The vision tower the released config names: relative names are tried beside the checkpoint first."""
    local = folder / name
    return str(local) if name and local.is_dir() else name


def released_config(folder: Path, tower: ClipVisionTower, sam2_config: str | Path | Sam2Config | None) -> GLUSConfig:
    """GLUSConfig of a released checkpoint from its ``config.json``, the CLIP tower and the SAM-2 yaml."""
    raw = _read_json(folder / "config.json")
    try:
        heads = int(raw["num_attention_heads"])
        text = TextConfig(
            vocab_size=int(raw["vocab_size"]), hidden_size=int(raw["hidden_size"]),
            intermediate_size=int(raw["intermediate_size"]), num_hidden_layers=int(raw["num_hidden_layers"]),
            num_attention_heads=heads, num_key_value_heads=int(raw.get("num_key_value_heads") or heads),
            max_position_embeddings=int(raw.get("max_position_embeddings", 2048)),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)), rope_theta=float(raw.get("rope_theta", 10000.0)),
            hidden_act=str(raw.get("hidden_act", "silu")), bos_token_id=int(raw.get("bos_token_id", 1)),
            eos_token_id=int(raw.get("eos_token_id", 2)), pad_token_id=int(raw.get("pad_token_id") or 0),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)))
    except (KeyError, TypeError, ValueError) as exc:
        raise GLUSError(f"not a LLaVA/GLUS config ({exc!r} missing or malformed)", folder / "config.json") from None
    _check_released_options(raw, folder / "config.json")
    clip = tower.clip.config
    mm_hidden = int(raw.get("mm_hidden_size", clip.hidden_size))
    if mm_hidden != clip.hidden_size:
        raise ParameterError(f"the checkpoint's projector expects CLIP width {mm_hidden}, the vision tower has "
                             f"{clip.hidden_size}: wrong {{vision_tower}}?", folder / "config.json")
    vision = VisionConfig(
        name_or_path=str(raw.get("mm_vision_tower") or raw.get("vision_tower") or ""),
        hidden_size=clip.hidden_size, intermediate_size=clip.intermediate_size,
        num_hidden_layers=clip.num_hidden_layers, num_attention_heads=clip.num_attention_heads,
        image_size=clip.image_size, patch_size=clip.patch_size, projection_dim=clip.projection_dim,
        hidden_act=clip.hidden_act, layer_norm_eps=clip.layer_norm_eps,
        select_layer=int(raw.get("mm_vision_select_layer", -2)))
    sam2 = sam2_config_from_arg(sam2_config)
    prompt_dim = int(raw.get("out_dim", 256))
    if prompt_dim != sam2.d_model:
        # text_hidden_fcs writes the SAM-2 prompt token: its width must be the mask decoder's.
        raise ParameterError(f"the checkpoint's [SEG] head gives {prompt_dim}-d prompts (out_dim) but the SAM-2 "
                             f"config has d_model {sam2.d_model}: wrong {{sam2_config}}?", folder / "config.json")
    config = GLUSConfig(text=text, vision=vision, sam2=sam2, prompt_dim=prompt_dim,
                        mm_use_im_start_end=bool(raw.get("mm_use_im_start_end", True)))
    if vision.num_patches % config.pool_kernel:
        raise GLUSError(f"the vision tower gives {vision.num_patches} patches, not divisible by the "
                        f"{config.pool_kernel}-token pooling", folder / "config.json")
    return config


def _check_released_options(raw: dict, where: Path) -> None:
    """Reject LLaVA / LLaMA options that change the computation and that glus does not implement."""
    unsupported = []
    if raw.get("rope_scaling") not in (None, {}):
        unsupported.append(f"rope_scaling={raw['rope_scaling']!r}")
    if raw.get("mm_vision_select_feature", "patch") != "patch":
        unsupported.append(f"mm_vision_select_feature={raw['mm_vision_select_feature']!r}")
    if raw.get("mm_use_im_patch_token", False):
        unsupported.append("mm_use_im_patch_token=true")
    if unsupported:
        raise GLUSError("unsupported model option(s): " + ", ".join(unsupported), where)


def _build_empty(config: GLUSConfig, dtype: torch.dtype, attn_implementation: str,
                 clip_processor_path: str | None) -> GLUSModel:
    """The model with the LLM on the meta device (filled by ``assign``) and a real, small SAM-2 model."""
    with torch.device("meta"):
        model = GLUSModel(config, attn_implementation=attn_implementation, clip_processor_path=clip_processor_path)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        model.attach_visual_model(Sam2Model(config.sam2))
    finally:
        torch.set_default_dtype(previous)
    return model


# The alignment of PyTorch's CPU allocator. Tensors read from a file can start anywhere in its buffer (safetensors
# pads its header to 8 bytes only), and BLAS kernels take other code paths (other float rounding) on unaligned data.
ALLOC_ALIGNMENT = 64


def _aligned(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``, copied to freshly allocated memory if its data is not allocator-aligned, so that a model loaded
    from any file computes bit-identically to the same weights held in memory."""
    return tensor if tensor.data_ptr() % ALLOC_ALIGNMENT == 0 else tensor.clone()


def load_weights(model: GLUSModel, state: dict[str, torch.Tensor], compat: Compat, where: Path) -> None:
    """Fill ``model`` from a released-layout state dict; any missing, unexpected or mis-shaped key is an error."""
    dropped = drop_non_weights(state)
    if dropped:
        logger.debug("dropped %d non-weight buffers (%s, ...)", len(dropped), dropped[0])
    visual = {k: v for k, v in state.items() if k.startswith(VISUAL_PREFIX)}
    rest = {k: v for k, v in state.items() if not k.startswith(VISUAL_PREFIX)}
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(VISUAL_PREFIX)}
    shapes = [f"{k} {tuple(v.shape)} vs {tuple(expected[k].shape)}" for k, v in rest.items()
              if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    try:
        report = model.sam2.load_meta_state_dict(visual, compat=compat, strict=False, prefix=VISUAL_PREFIX)
    except ValueError as exc:
        raise GLUSError(str(exc), where) from None
    missing = sorted(set(expected) - set(rest)) + [VISUAL_PREFIX + k for k in report.missing_keys]
    unexpected = sorted(set(rest) - set(expected)) + [VISUAL_PREFIX + k for k in report.unexpected_keys]
    problem = describe_key_mismatch(missing, unexpected, where, shapes)
    if problem:
        raise GLUSError(problem)
    model.load_state_dict({k: _aligned(v) for k, v in rest.items()}, strict=False, assign=True)
    if report.fuser_gamma_replaced:
        logger.info("compat=%s: %d fuser gamma tensor(s) at their init value, as the authors' loader leaves them",
                    compat, len(report.fuser_gamma_replaced))


def from_pretrained(path_or_id: str | Path, *, vision_tower: str | Path | None = None,
                    sam2_config: str | Path | Sam2Config | None = None, compat: Compat | None = None,
                    dtype: str | torch.dtype = torch.float32, device: str | torch.device = "cpu",
                    attn_implementation: str = "sdpa", load_in_bits: int | None = None) -> GLUSModel:
    """Load a GLUS model from a released checkpoint or glus's own format (see the module docstring).

    Args:
        path_or_id: a local folder or a hub id (downloaded through huggingface_hub where a network exists).
        vision_tower: CLIP folder or id (released layout only; default: the one the config names, looked up
            beside the checkpoint first).
        sam2_config: Meta SAM-2 yaml or a ``Sam2Config`` (released layout only; default Hiera-L).
        compat: fuser gamma handling for released checkpoints (default ``"official"``); a glus-format folder
            stores the values in effect when it was written, so only ``"stored"`` applies there.
        dtype, device: where the model lives.
        load_in_bits: 4 or 8 to load the LLaMA decoder through bitsandbytes (CUDA only; SAM-2 stays in float32).
    """
    dtype = parse_dtype(dtype)
    if load_in_bits is not None:
        check_quantization(load_in_bits, device)
    folder = resolve_checkpoint(path_or_id)
    check_compat(compat)
    if is_glus_format(folder):
        if vision_tower is not None or sam2_config is not None:
            logger.warning("%s is in glus format: vision_tower / sam2_config are ignored", folder)
        raw = _read_json(folder / "config.json")
        try:
            config = GLUSConfig.from_dict(raw["config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise GLUSError(f"malformed glus config ({exc})", folder / "config.json") from None
        tower_dir = folder / "vision_tower"
        tower = load_vision_tower(tower_dir, select_layer=config.vision.select_layer)
        model = _build_empty(config, dtype, attn_implementation, str(tower_dir))
        load_weights(model, load_state_dict(folder), "stored", folder)
    else:
        raw = _read_json(folder / "config.json")
        name = str(vision_tower or raw.get("mm_vision_tower") or raw.get("vision_tower") or "")
        if not name:
            raise ParameterError("the config names no vision tower: pass {vision_tower}", folder / "config.json")
        tower_path = name if vision_tower is not None else resolve_tower_path(name, folder)
        tower = load_vision_tower(tower_path, select_layer=int(raw.get("mm_vision_select_layer", -2)))
        config = released_config(folder, tower, sam2_config)
        model = _build_empty(config, dtype, attn_implementation, tower_path)
        load_weights(model, load_state_dict(folder), compat or "official", folder)
    model.materialize_rotary("cpu")
    model.set_vision_tower(tower)
    if load_in_bits is not None:
        # bitsandbytes computes in half precision; SAM-2 keeps full precision, as the released inference does.
        quantize_llm(model, load_in_bits, device, compute_dtype=torch.float16 if dtype == torch.float32 else dtype)
        model.sam2.to(torch.float32)
    else:
        model.to(device=device, dtype=dtype)
    model.eval()
    _set_seg_token_id(model, folder)
    return model


def _set_seg_token_id(model: GLUSModel, folder: Path) -> None:
    """Record the tokenizer's ``[SEG]`` id on the model (training needs it) when the folder has a tokenizer."""
    if (folder / "tokenizer.model").is_file():
        from glus.tokenizer import GLUSTokenizer

        seg = GLUSTokenizer.from_pretrained(folder).seg_token_id
        vocab = model.config.text.vocab_size
        if not 0 <= seg < vocab:
            raise GLUSError(f"the tokenizer's [SEG] id {seg} is outside the model's {vocab}-token vocabulary",
                            folder / "added_tokens.json")
        model.seg_token_id = seg


def save_pretrained(model: GLUSModel, folder: str | Path, tokenizer=None, *, source: str = "") -> Path:
    """Write ``model`` (and ``tokenizer``) in glus's format; loading it back gives bit-identical outputs."""
    folder = Path(folder)
    tower = model.vision_tower
    if tower is None:
        raise ValueError("the model has no vision tower to save")
    folder.mkdir(parents=True, exist_ok=True)
    # An old config.json would make a folder whose rewrite is interrupted look complete: it goes first.
    (folder / "config.json").unlink(missing_ok=True)
    tower_dir = folder / "vision_tower"
    with safetensors_os_errors(tower_dir / "model.safetensors"):
        tower.clip.save_pretrained(tower_dir, safe_serialization=True)
    model.clip_processor.save_pretrained(tower_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    state = {k: v for k, v in model.state_dict().items()}
    save_safetensors_atomic(state, folder / "model.safetensors", metadata={"format": "pt"})
    # config.json last: its presence marks a complete glus-format folder.
    atomic_write_json(folder / "config.json", {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                                              "source": source, "config": model.config.to_dict()}, indent=2)
    usual_permissions(folder)
    return folder
