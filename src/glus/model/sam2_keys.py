"""Two-way mapping between transformers' SAM-2 parameter names and Meta's upstream names.

GLUS checkpoints store SAM-2 under Meta's names (``model.visual_model.image_encoder.trunk.blocks.0.norm1.weight``),
while glus runs transformers' modules (``image_encoder.backbone.blocks.0.layer_norm1.weight``). The mapping is a
list of rename rules from transformers' local names to Meta's (:func:`hf_to_meta_key`) plus one reshaping rule:
transformers keeps the four prompt point embeddings in one ``point_embed.weight [4, C]`` where Meta has four
``point_embeddings.{i}.weight [1, C]``.

:class:`Sam2KeyMap` turns the rules into an explicit bijection over one module's actual keys (so a rule that
misses or collides fails at construction) and installs state-dict hooks: ``state_dict()`` shows Meta names,
``load_state_dict()`` takes Meta names, and its missing-key report is translated back to Meta names.

The fuser layer-scale compatibility of the released code is :func:`apply_fuser_gamma_compat`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, MutableMapping
from typing import Literal

import torch
from torch import nn

FuserGammaCompat = Literal["official", "stored"]

POINT_EMBED_HF = "sam_prompt_encoder.point_embed.weight"
_POINT_EMBED_META = re.compile(r"sam_prompt_encoder\.point_embeddings\.(\d+)\.weight")
FUSER_GAMMA = re.compile(r"memory_encoder\.fuser\.layers\.(\d+)\.gamma")

_P = r"(weight|bias)"


def _mlp3(pattern: str, meta: str) -> list[tuple[str, str]]:
    """transformers' 3-layer FeedForward (proj_in, layers.0, proj_out) -> Meta's MLP (layers.0, 1, 2).

    ``pattern`` matches the MLP's transformers name, ``meta`` is its Meta name (may use ``pattern``'s groups).
    """
    return [(rf"^{pattern}\.proj_in\.", f"{meta}.layers.0."),
            (rf"^{pattern}\.layers\.0\.", f"{meta}.layers.1."),
            (rf"^{pattern}\.proj_out\.", f"{meta}.layers.2.")]


def _downsampler(match: re.Match[str]) -> str:
    """Meta's MaskDownSampler is one Sequential: (conv, LayerNorm2d, GELU) per layer, then the final 1x1 conv."""
    index, part, param = int(match.group(1)), match.group(2), match.group(3)
    return f"memory_encoder.mask_downsampler.encoder.{3 * index + (part == 'layer_norm')}.{param}"


_ATTN = r"(self_attn|cross_attn_token_to_image|cross_attn_image_to_token|cross_attn_image)"

# (transformers-name regex, Meta-name replacement); the first matching rule applies, unmatched keys keep their name.
_RULES: list[tuple[str, str | Callable[[re.Match[str]], str]]] = [
    # Hiera trunk and FPN neck
    (r"^image_encoder\.backbone\.patch_embed\.projection\.", "image_encoder.trunk.patch_embed.proj."),
    (r"^image_encoder\.backbone\.blocks\.(\d+)\.layer_norm([12])\.", r"image_encoder.trunk.blocks.\1.norm\2."),
    (r"^image_encoder\.backbone\.blocks\.(\d+)\.mlp\.proj_in\.", r"image_encoder.trunk.blocks.\1.mlp.layers.0."),
    (r"^image_encoder\.backbone\.blocks\.(\d+)\.mlp\.proj_out\.", r"image_encoder.trunk.blocks.\1.mlp.layers.1."),
    (r"^image_encoder\.backbone\.", "image_encoder.trunk."),
    (rf"^image_encoder\.neck\.convs\.(\d+)\.{_P}$", r"image_encoder.neck.convs.\1.conv.\2"),
    # prompt encoder
    (r"^sam_prompt_encoder\.shared_embedding\.positional_embedding$",
     "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"),
    (r"^sam_prompt_encoder\.mask_embed\.conv1\.", "sam_prompt_encoder.mask_downscaling.0."),
    (r"^sam_prompt_encoder\.mask_embed\.layer_norm1\.", "sam_prompt_encoder.mask_downscaling.1."),
    (r"^sam_prompt_encoder\.mask_embed\.conv2\.", "sam_prompt_encoder.mask_downscaling.3."),
    (r"^sam_prompt_encoder\.mask_embed\.layer_norm2\.", "sam_prompt_encoder.mask_downscaling.4."),
    (r"^sam_prompt_encoder\.mask_embed\.conv3\.", "sam_prompt_encoder.mask_downscaling.6."),
    # mask decoder
    (rf"^sam_mask_decoder\.transformer\.layers\.(\d+)\.{_ATTN}\.o_proj\.",
     r"sam_mask_decoder.transformer.layers.\1.\2.out_proj."),
    (r"^sam_mask_decoder\.transformer\.layers\.(\d+)\.layer_norm(\d)\.",
     r"sam_mask_decoder.transformer.layers.\1.norm\2."),
    (r"^sam_mask_decoder\.transformer\.layers\.(\d+)\.mlp\.proj_in\.",
     r"sam_mask_decoder.transformer.layers.\1.mlp.layers.0."),
    (r"^sam_mask_decoder\.transformer\.layers\.(\d+)\.mlp\.proj_out\.",
     r"sam_mask_decoder.transformer.layers.\1.mlp.layers.1."),
    (r"^sam_mask_decoder\.transformer\.final_attn_token_to_image\.o_proj\.",
     "sam_mask_decoder.transformer.final_attn_token_to_image.out_proj."),
    (r"^sam_mask_decoder\.transformer\.layer_norm_final_attn\.", "sam_mask_decoder.transformer.norm_final_attn."),
    (r"^sam_mask_decoder\.upscale_conv1\.", "sam_mask_decoder.output_upscaling.0."),
    (r"^sam_mask_decoder\.upscale_layer_norm\.", "sam_mask_decoder.output_upscaling.1."),
    (r"^sam_mask_decoder\.upscale_conv2\.", "sam_mask_decoder.output_upscaling.3."),
    *_mlp3(r"sam_mask_decoder\.output_hypernetworks_mlps\.(\d+)", r"sam_mask_decoder.output_hypernetworks_mlps.\1"),
    *_mlp3(r"sam_mask_decoder\.iou_prediction_head", "sam_mask_decoder.iou_prediction_head"),
    *_mlp3(r"sam_mask_decoder\.pred_obj_score_head", "sam_mask_decoder.pred_obj_score_head"),
    # memory attention
    (rf"^memory_attention\.layers\.(\d+)\.{_ATTN}\.o_proj\.", r"memory_attention.layers.\1.\2.out_proj."),
    (r"^memory_attention\.layers\.(\d+)\.layer_norm(\d)\.", r"memory_attention.layers.\1.norm\2."),
    (r"^memory_attention\.layer_norm\.", "memory_attention.norm."),
    # memory encoder
    (rf"^memory_encoder\.mask_downsampler\.layers\.(\d+)\.(conv|layer_norm)\.{_P}$", _downsampler),
    (r"^memory_encoder\.feature_projection\.", "memory_encoder.pix_feat_proj."),
    (r"^memory_encoder\.memory_fuser\.layers\.(\d+)\.scale$", r"memory_encoder.fuser.layers.\1.gamma"),
    (r"^memory_encoder\.memory_fuser\.layers\.(\d+)\.depthwise_conv\.", r"memory_encoder.fuser.layers.\1.dwconv."),
    (r"^memory_encoder\.memory_fuser\.layers\.(\d+)\.layer_norm\.", r"memory_encoder.fuser.layers.\1.norm."),
    (r"^memory_encoder\.memory_fuser\.layers\.(\d+)\.pointwise_conv([12])\.",
     r"memory_encoder.fuser.layers.\1.pwconv\2."),
    (r"^memory_encoder\.projection\.", "memory_encoder.out_proj."),
]


_COMPILED = [(re.compile(pattern), repl) for pattern, repl in _RULES]
# the downsampler's final conv follows its last (conv, norm, act) triple: its index depends on the layer count
_FINAL_CONV = re.compile(r"^memory_encoder\.mask_downsampler\.final_conv\.(weight|bias)$")


def hf_to_meta_key(key: str, num_downsampler_layers: int) -> str:
    """Meta's name of a transformers SAM-2 key local to the SAM-2 module (no ``model.visual_model.`` prefix)."""
    match = _FINAL_CONV.match(key)
    if match:
        return f"memory_encoder.mask_downsampler.encoder.{3 * num_downsampler_layers}.{match.group(1)}"
    for pattern, repl in _COMPILED:
        if pattern.search(key):
            return pattern.sub(repl, key, count=1)
    return key


class Sam2KeyMap:
    """The explicit Meta <-> transformers bijection of one SAM-2 module's state-dict keys.

    Args:
        hf_keys: the module's own ``state_dict()`` keys (transformers' names, no prefix).
        num_downsampler_layers: conv layers of the memory encoder's mask downsampler (4 for stride 2, total 16).
        num_point_embeddings: rows of ``sam_prompt_encoder.point_embed.weight`` (Meta: that many 1-row embeddings).
    """

    def __init__(self, hf_keys: Iterable[str], num_downsampler_layers: int, num_point_embeddings: int = 4) -> None:
        self.num_point_embeddings = num_point_embeddings
        self.hf_to_meta: dict[str, str] = {}
        self.meta_to_hf: dict[str, str] = {}
        for key in hf_keys:
            if key == POINT_EMBED_HF:
                continue
            meta = hf_to_meta_key(key, num_downsampler_layers)
            if meta in self.meta_to_hf:
                raise ValueError(f"SAM-2 key mapping collision: {key} and {self.meta_to_hf[meta]} -> {meta}")
            self.hf_to_meta[key] = meta
            self.meta_to_hf[meta] = key
        self.point_embed_meta = [f"sam_prompt_encoder.point_embeddings.{i}.weight" for i in range(num_point_embeddings)]

    # ---- state_dict (transformers -> Meta) -------------------------------------------------------------------
    def to_meta(self, state_dict: MutableMapping[str, torch.Tensor], prefix: str = "") -> None:
        """Rename, in place, the keys under ``prefix`` from transformers' names to Meta's."""
        # Pop everything first: a transformers name can equal another key's Meta name (MLP ``layers.0``).
        renamed: dict[str, torch.Tensor] = {}
        for key in [k for k in state_dict if k.startswith(prefix)]:
            local = key[len(prefix):]
            if local == POINT_EMBED_HF:
                rows = state_dict.pop(key)
                for i, name in enumerate(self.point_embed_meta):
                    # clone: the rows of one tensor would share storage, which safetensors refuses to save
                    renamed[prefix + name] = rows[i:i + 1].clone()
            elif local in self.hf_to_meta:
                renamed[prefix + self.hf_to_meta[local]] = state_dict.pop(key)
        state_dict.update(renamed)

    # ---- load_state_dict (Meta -> transformers) --------------------------------------------------------------
    def to_hf(self, state_dict: MutableMapping[str, torch.Tensor], prefix: str = "") -> None:
        """Rename, in place, Meta-named keys under ``prefix`` to transformers' names (other keys are left alone
        and reported by the loader).

        The four point embeddings are stacked into one tensor only when all are present; otherwise they stay
        and the loader reports them (unexpected) and ``point_embed`` (missing).
        """
        points = {}
        renamed: dict[str, torch.Tensor] = {}
        for key in [k for k in state_dict if k.startswith(prefix)]:
            local = key[len(prefix):]
            match = _POINT_EMBED_META.fullmatch(local)
            if match:
                points[int(match.group(1))] = key
            elif local in self.meta_to_hf:
                renamed[prefix + self.meta_to_hf[local]] = state_dict.pop(key)
        if sorted(points) == list(range(self.num_point_embeddings)):
            rows = [state_dict.pop(points[i]) for i in range(self.num_point_embeddings)]
            renamed[prefix + POINT_EMBED_HF] = torch.cat(rows, dim=0)
        state_dict.update(renamed)

    def report_in_meta(self, keys: list[str]) -> None:
        """Translate, in place, full key names (any prefix) in a missing/unexpected list to Meta's names."""
        out: list[str] = []
        for key in keys:
            out.extend(self._meta_names_of(key))
        keys[:] = out

    def _meta_names_of(self, key: str) -> list[str]:
        parts = key.split(".")
        for i in range(len(parts)):
            prefix, local = ".".join(parts[:i]), ".".join(parts[i:])
            lead = prefix + "." if prefix else ""
            if local == POINT_EMBED_HF:
                return [lead + name for name in self.point_embed_meta]
            if local in self.hf_to_meta:
                return [lead + self.hf_to_meta[local]]
        return [key]

    def install(self, module: nn.Module) -> None:
        """Make ``module.state_dict()`` / ``load_state_dict()`` speak Meta's names (also when nested)."""

        def save_hook(_module: nn.Module, state_dict: MutableMapping[str, torch.Tensor], prefix: str,
                      _local_metadata: dict) -> None:
            self.to_meta(state_dict, prefix)

        def load_pre_hook(_module: nn.Module, state_dict: MutableMapping[str, torch.Tensor], prefix: str,
                          *_args: object) -> None:
            self.to_hf(state_dict, prefix)

        def load_post_hook(_module: nn.Module, incompatible: object) -> None:
            self.report_in_meta(incompatible.missing_keys)

        if hasattr(module, "register_state_dict_post_hook"):  # public since torch 2.5
            module.register_state_dict_post_hook(save_hook)
            module.register_load_state_dict_pre_hook(load_pre_hook)
        else:  # torch 2.4: the same hooks under their private names (both modify the dict in place)
            module._register_state_dict_hook(save_hook)
            module._register_load_state_dict_pre_hook(load_pre_hook, with_module=True)
        module.register_load_state_dict_post_hook(load_post_hook)


def apply_fuser_gamma_compat(state_dict: MutableMapping[str, torch.Tensor], compat: FuserGammaCompat,
                             init_value: float, prefix: str = "") -> list[str]:
    """Apply the released code's handling of the memory-encoder fuser layer scales, in place.

    transformers 4.31 (which GLUS pins) renames every checkpoint key containing ``gamma`` before matching, so
    the authors' loader never loads ``memory_encoder.fuser.layers.{i}.gamma``: those stay at their init value
    (``layer_scale_init_value``, 1e-6) whatever the file holds, and the published results were produced so.

    Args:
        state_dict: Meta-named SAM-2 tensors (keys under ``prefix``).
        compat: ``"official"`` replaces every fuser gamma by ``init_value`` (reproduces the authors);
            ``"stored"`` leaves the file's values.
        init_value: the fuser's ``layer_scale_init_value``.
    Returns:
        the keys whose values were replaced.
    """
    if compat not in ("official", "stored"):
        raise ValueError(f"compat must be 'official' or 'stored', not {compat!r}")
    replaced = []
    if compat == "official":
        for key in list(state_dict):
            if key.startswith(prefix) and FUSER_GAMMA.fullmatch(key[len(prefix):]):
                state_dict[key] = torch.full_like(state_dict[key], init_value)
                replaced.append(key)
    return replaced
