"""The whole GLUS model's state dict is the released checkpoints' layout (spec section 6).

At glus-7b size the model is built on the meta device (nothing allocated) and every key and shape is compared
with a list written here from the architecture: LLaMA-7B (LISA-7B-v1: 32 layers, width 4096, MLP 11008,
vocabulary 32004), ``mm_projector`` Linear(1024, 4096), ``text_hidden_fcs`` 4096 -> 4096 -> 256, and Meta's
``sam2_hiera_large`` SAM-2 (Hiera-L trunk of 48 blocks, FPN neck, 4 memory-attention layers, memory encoder,
prompt encoder, mask decoder, object-pointer modules). The same rules at tiny size give exactly the tensor list
of the authors' tiny checkpoint (``keys.txt``), which checks the rules themselves.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from glus.config import GLUSConfig, glus_7b, tiny
from glus.model.glus import GLUSModel

from conftest import OFFICIAL_TINY

REF = OFFICIAL_TINY

Layout = dict[str, tuple[int, ...]]


class _Spec:
    """Collects ``key -> shape`` entries with the helpers PyTorch's layer types imply."""

    def __init__(self) -> None:
        self.shapes: Layout = {}

    def tensor(self, key: str, *shape: int) -> None:
        assert key not in self.shapes, key
        self.shapes[key] = tuple(shape)

    def linear(self, name: str, fan_out: int, fan_in: int, bias: bool = True) -> None:
        self.tensor(f"{name}.weight", fan_out, fan_in)
        if bias:
            self.tensor(f"{name}.bias", fan_out)

    def norm(self, name: str, width: int, bias: bool = True) -> None:
        self.tensor(f"{name}.weight", width)
        if bias:
            self.tensor(f"{name}.bias", width)

    def conv(self, name: str, out_ch: int, in_ch: int, kernel: int) -> None:
        self.tensor(f"{name}.weight", out_ch, in_ch, kernel, kernel)
        self.tensor(f"{name}.bias", out_ch)

    def mlp3(self, name: str, fan_in: int, hidden: int, fan_out: int) -> None:
        """Meta's 3-layer ``MLP`` (``layers.0..2``)."""
        self.linear(f"{name}.layers.0", hidden, fan_in)
        self.linear(f"{name}.layers.1", hidden, hidden)
        self.linear(f"{name}.layers.2", fan_out, hidden)


def llm_layout(cfg: GLUSConfig, spec: _Spec) -> None:
    """LLaVA / LISA LLaMA with GLUS's projector and [SEG] head (transformers' LLaMA names, no biases)."""
    t = cfg.text
    h, head_dim = t.hidden_size, t.hidden_size // t.num_attention_heads
    spec.tensor("model.embed_tokens.weight", t.vocab_size, h)
    for i in range(t.num_hidden_layers):
        p = f"model.layers.{i}"
        spec.linear(f"{p}.self_attn.q_proj", t.num_attention_heads * head_dim, h, bias=False)
        spec.linear(f"{p}.self_attn.k_proj", t.num_key_value_heads * head_dim, h, bias=False)
        spec.linear(f"{p}.self_attn.v_proj", t.num_key_value_heads * head_dim, h, bias=False)
        spec.linear(f"{p}.self_attn.o_proj", h, t.num_attention_heads * head_dim, bias=False)
        spec.linear(f"{p}.mlp.gate_proj", t.intermediate_size, h, bias=False)
        spec.linear(f"{p}.mlp.up_proj", t.intermediate_size, h, bias=False)
        spec.linear(f"{p}.mlp.down_proj", h, t.intermediate_size, bias=False)
        spec.norm(f"{p}.input_layernorm", h, bias=False)
        spec.norm(f"{p}.post_attention_layernorm", h, bias=False)
    spec.norm("model.norm", h, bias=False)
    spec.linear("model.mm_projector", h, cfg.vision.hidden_size)
    spec.linear("model.text_hidden_fcs.0.0", h, h)
    spec.linear("model.text_hidden_fcs.0.2", cfg.prompt_dim, h)
    spec.linear("lm_head", t.vocab_size, h, bias=False)


def sam2_layout(cfg: GLUSConfig, spec: _Spec, prefix: str = "model.visual_model.") -> None:
    """Meta's SAM2Base (SAM 2.0, ``build_sam2``) with its upstream names."""
    s = cfg.sam2
    c, m, e = s.d_model, s.mem_dim, s.embed_dim

    def t(key: str, *shape: int) -> None:
        spec.tensor(prefix + key, *shape)

    def lin(name: str, fan_out: int, fan_in: int) -> None:
        spec.linear(prefix + name, fan_out, fan_in)

    def norm(name: str, width: int) -> None:
        spec.norm(prefix + name, width)

    def conv(name: str, out_ch: int, in_ch: int, kernel: int) -> None:
        spec.conv(prefix + name, out_ch, in_ch, kernel)

    def mlp3(name: str, fan_in: int, hidden: int, fan_out: int) -> None:
        spec.mlp3(prefix + name, fan_in, hidden, fan_out)

    # SAM2Base's own tensors (GLUS uses no_mem_embed; the others are in every released checkpoint)
    t("maskmem_tpos_enc", s.num_maskmem, 1, 1, m)
    t("no_mem_embed", 1, 1, c)
    t("no_mem_pos_enc", 1, 1, c)
    t("no_obj_ptr", 1, c)
    conv("mask_downsample", 1, 1, 4)
    mlp3("obj_ptr_proj", c, c, c)

    # Hiera trunk: the width doubles (and a projection appears) at the first block of every later stage
    t("image_encoder.trunk.pos_embed", 1, e, *s.window_pos_embed_bkg_spatial_size)
    t("image_encoder.trunk.pos_embed_window", 1, e, s.window_spec[0], s.window_spec[0])
    conv("image_encoder.trunk.patch_embed.proj", e, 3, 7)
    block, dim = 0, e
    for stage, depth in enumerate(s.stages):
        dim_out = e * 2 ** stage
        for _ in range(depth):
            p = f"image_encoder.trunk.blocks.{block}"
            norm(f"{p}.norm1", dim)
            lin(f"{p}.attn.qkv", 3 * dim_out, dim)
            lin(f"{p}.attn.proj", dim_out, dim_out)
            norm(f"{p}.norm2", dim_out)
            lin(f"{p}.mlp.layers.0", 4 * dim_out, dim_out)
            lin(f"{p}.mlp.layers.1", dim_out, 4 * dim_out)
            if dim != dim_out:
                lin(f"{p}.proj", dim_out, dim)
            block, dim = block + 1, dim_out
    # FPN neck: one 1x1 conv per trunk stage, deepest first
    for i, channels in enumerate(s.backbone_channel_list):
        conv(f"image_encoder.neck.convs.{i}.conv", c, channels, 1)

    # memory attention (RoPE self-attention, cross-attention to mem_dim memories)
    for i in range(s.mem_attn_num_layers):
        p = f"memory_attention.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            lin(f"{p}.self_attn.{proj}", c, c)
        lin(f"{p}.cross_attn_image.q_proj", c, c)
        lin(f"{p}.cross_attn_image.k_proj", c, m)
        lin(f"{p}.cross_attn_image.v_proj", c, m)
        lin(f"{p}.cross_attn_image.out_proj", c, c)
        lin(f"{p}.linear1", s.mem_attn_dim_feedforward, c)
        lin(f"{p}.linear2", c, s.mem_attn_dim_feedforward)
        for k in (1, 2, 3):
            norm(f"{p}.norm{k}", c)
    norm("memory_attention.norm", c)

    # memory encoder: mask down-sampler (x4 channels per stride-2 conv up to stride 16), pixel projection,
    # two ConvNeXt fuser blocks (with the layer-scale gamma of quirk 1), output projection to mem_dim
    steps = round(math.log(16, s.mask_downsampler_stride))
    ch, k = 1, s.mask_downsampler_kernel_size
    for i in range(steps):
        conv(f"memory_encoder.mask_downsampler.encoder.{3 * i}", ch * 4, ch, k)
        norm(f"memory_encoder.mask_downsampler.encoder.{3 * i + 1}", ch * 4)
        ch *= 4
    conv(f"memory_encoder.mask_downsampler.encoder.{3 * steps}", c, ch, 1)
    conv("memory_encoder.pix_feat_proj", c, c, 1)
    for i in range(s.fuser_num_layers):
        p = f"memory_encoder.fuser.layers.{i}"
        conv(f"{p}.dwconv", c, 1, s.fuser_kernel_size)  # depth-wise
        norm(f"{p}.norm", c)
        lin(f"{p}.pwconv1", 4 * c, c)
        lin(f"{p}.pwconv2", c, 4 * c)
        t(f"{p}.gamma", c)
    conv("memory_encoder.out_proj", m, c, 1)

    # prompt encoder
    t("sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", 2, c // 2)
    for i in range(4):
        t(f"sam_prompt_encoder.point_embeddings.{i}.weight", 1, c)
    t("sam_prompt_encoder.not_a_point_embed.weight", 1, c)
    conv("sam_prompt_encoder.mask_downscaling.0", 4, 1, 2)
    norm("sam_prompt_encoder.mask_downscaling.1", 4)
    conv("sam_prompt_encoder.mask_downscaling.3", 16, 4, 2)
    norm("sam_prompt_encoder.mask_downscaling.4", 16)
    conv("sam_prompt_encoder.mask_downscaling.6", c, 16, 1)
    t("sam_prompt_encoder.no_mask_embed.weight", 1, c)

    # mask decoder: two-way transformer (depth 2, MLP 2048, token<->image attention at half width)
    d = "sam_mask_decoder"
    for i in range(2):
        p = f"{d}.transformer.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            lin(f"{p}.self_attn.{proj}", c, c)
        for attn in ("cross_attn_token_to_image", "cross_attn_image_to_token"):
            for proj in ("q_proj", "k_proj", "v_proj"):
                lin(f"{p}.{attn}.{proj}", c // 2, c)
            lin(f"{p}.{attn}.out_proj", c, c // 2)
        lin(f"{p}.mlp.layers.0", 2048, c)
        lin(f"{p}.mlp.layers.1", c, 2048)
        for k in (1, 2, 3, 4):
            norm(f"{p}.norm{k}", c)
    for proj in ("q_proj", "k_proj", "v_proj"):
        lin(f"{d}.transformer.final_attn_token_to_image.{proj}", c // 2, c)
    lin(f"{d}.transformer.final_attn_token_to_image.out_proj", c, c // 2)
    norm(f"{d}.transformer.norm_final_attn", c)
    t(f"{d}.iou_token.weight", 1, c)
    t(f"{d}.mask_tokens.weight", 4, c)  # 1 single-mask + 3 multimask tokens
    t(f"{d}.obj_score_token.weight", 1, c)
    t(f"{d}.output_upscaling.0.weight", c, c // 4, 2, 2)  # ConvTranspose2d: [in, out, k, k]
    t(f"{d}.output_upscaling.0.bias", c // 4)
    norm(f"{d}.output_upscaling.1", c // 4)
    t(f"{d}.output_upscaling.3.weight", c // 4, c // 8, 2, 2)
    t(f"{d}.output_upscaling.3.bias", c // 8)
    conv(f"{d}.conv_s0", c // 8, c, 1)
    conv(f"{d}.conv_s1", c // 4, c, 1)
    for i in range(4):
        mlp3(f"{d}.output_hypernetworks_mlps.{i}", c, c, c // 8)
    mlp3(f"{d}.iou_prediction_head", c, 256, 4)
    mlp3(f"{d}.pred_obj_score_head", c, c, 1)


def expected_layout(cfg: GLUSConfig) -> Layout:
    spec = _Spec()
    llm_layout(cfg, spec)
    sam2_layout(cfg, spec)
    return spec.shapes


@pytest.fixture(scope="module")
def glus_7b_layout() -> Layout:
    with torch.device("meta"):
        model = GLUSModel(glus_7b())
    state = model.state_dict()
    assert all(v.device.type == "meta" for v in state.values())  # nothing was allocated
    return {k: tuple(v.shape) for k, v in state.items()}


def _indices(layout: Layout, pattern: str) -> list[int]:
    """Sorted distinct values of the ``(\\d+)`` group of ``pattern`` over the keys."""
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in layout if (m := regex.match(k))})


def test_glus_7b_keys_and_shapes_equal_the_released_layout(glus_7b_layout: Layout) -> None:
    expected = expected_layout(glus_7b())
    assert sorted(set(glus_7b_layout) - set(expected)) == []  # unexpected
    assert sorted(set(expected) - set(glus_7b_layout)) == []  # missing
    wrong = {k: (glus_7b_layout[k], v) for k, v in expected.items() if glus_7b_layout[k] != v}
    assert wrong == {}


def test_glus_7b_pinned_shapes(glus_7b_layout: Layout) -> None:
    """A few shapes written out by hand (Meta's sam2_hiera_large.pt, LISA-7B-v1)."""
    v = "model.visual_model."
    pinned = {
        "model.embed_tokens.weight": (32004, 4096),
        "lm_head.weight": (32004, 4096),
        "model.layers.31.mlp.down_proj.weight": (4096, 11008),
        "model.mm_projector.weight": (4096, 1024),
        "model.text_hidden_fcs.0.2.weight": (256, 4096),
        v + "image_encoder.trunk.patch_embed.proj.weight": (144, 3, 7, 7),
        v + "image_encoder.trunk.pos_embed": (1, 144, 7, 7),
        v + "image_encoder.trunk.pos_embed_window": (1, 144, 8, 8),
        v + "image_encoder.trunk.blocks.2.proj.weight": (288, 144),
        v + "image_encoder.trunk.blocks.47.attn.qkv.weight": (3456, 1152),
        v + "image_encoder.neck.convs.0.conv.weight": (256, 1152, 1, 1),
        v + "image_encoder.neck.convs.3.conv.weight": (256, 144, 1, 1),
        v + "memory_attention.layers.3.cross_attn_image.k_proj.weight": (256, 64),
        v + "memory_attention.layers.0.linear1.weight": (2048, 256),
        v + "memory_encoder.mask_downsampler.encoder.12.weight": (256, 256, 1, 1),
        v + "memory_encoder.fuser.layers.1.gamma": (256,),
        v + "memory_encoder.fuser.layers.0.dwconv.weight": (256, 1, 7, 7),
        v + "memory_encoder.out_proj.weight": (64, 256, 1, 1),
        v + "sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (2, 128),
        v + "sam_mask_decoder.iou_prediction_head.layers.2.weight": (4, 256),
        v + "sam_mask_decoder.output_hypernetworks_mlps.3.layers.2.weight": (32, 256),
        v + "sam_mask_decoder.output_upscaling.0.weight": (256, 64, 2, 2),
        v + "obj_ptr_proj.layers.2.weight": (256, 256),
        v + "maskmem_tpos_enc": (7, 1, 1, 64),
        v + "no_mem_embed": (1, 1, 256),
        v + "no_mem_pos_enc": (1, 1, 256),
        v + "no_obj_ptr": (1, 256),
        v + "mask_downsample.weight": (1, 1, 4, 4),
    }
    assert {k: glus_7b_layout[k] for k in pinned} == pinned


def test_glus_7b_module_family_counts(glus_7b_layout: Layout) -> None:
    L, v = glus_7b_layout, r"model\.visual_model\."
    assert _indices(L, r"model\.layers\.(\d+)\.") == list(range(32))
    assert not any("rotary_emb" in k or "vision_tower" in k for k in L)  # no buffers, no CLIP (spec section 6)
    assert _indices(L, v + r"image_encoder\.trunk\.blocks\.(\d+)\.") == list(range(48))
    assert _indices(L, v + r"image_encoder\.trunk\.blocks\.(\d+)\.proj\.weight") == [2, 8, 44]  # stage starts
    assert _indices(L, v + r"image_encoder\.neck\.convs\.(\d+)\.") == [0, 1, 2, 3]
    assert _indices(L, v + r"memory_attention\.layers\.(\d+)\.") == [0, 1, 2, 3]
    assert _indices(L, v + r"memory_encoder\.fuser\.layers\.(\d+)\.") == [0, 1]
    assert _indices(L, v + r"memory_encoder\.mask_downsampler\.encoder\.(\d+)\.") == [0, 1, 3, 4, 6, 7, 9, 10, 12]
    assert _indices(L, v + r"sam_prompt_encoder\.point_embeddings\.(\d+)\.") == [0, 1, 2, 3]
    assert _indices(L, v + r"sam_mask_decoder\.transformer\.layers\.(\d+)\.") == [0, 1]
    assert _indices(L, v + r"sam_mask_decoder\.output_hypernetworks_mlps\.(\d+)\.") == [0, 1, 2, 3]
    assert _indices(L, v + r"obj_ptr_proj\.layers\.(\d+)\.") == [0, 1, 2]
    families = {k.removeprefix("model.visual_model.").split(".")[0] for k in L if k.startswith("model.visual_model.")}
    assert families == {"image_encoder", "memory_attention", "memory_encoder", "sam_prompt_encoder",
                        "sam_mask_decoder", "obj_ptr_proj", "mask_downsample", "maskmem_tpos_enc", "no_mem_embed",
                        "no_mem_pos_enc", "no_obj_ptr"}


def test_glus_7b_parameter_counts(glus_7b_layout: Layout) -> None:
    def count(keys) -> int:
        return sum(int(np.prod(glus_7b_layout[k])) for k in keys)

    sam = count(k for k in glus_7b_layout if k.startswith("model.visual_model."))
    trunk = count(k for k in glus_7b_layout if k.startswith("model.visual_model.image_encoder.trunk."))
    llm = count(k for k in glus_7b_layout if not k.startswith("model.visual_model."))
    assert 224.0e6 < sam < 224.8e6  # Meta: SAM 2 Hiera-L, 224.4 M parameters
    assert 212e6 < trunk < 213e6  # Hiera-L image encoder trunk
    # LLaMA-7B (6,738,415,616) + 4 added token rows in embed_tokens and lm_head + projector + [SEG] head
    assert llm == 6_738_415_616 + 2 * 4 * 4096 + (1024 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 256 + 256)


def test_rules_and_tiny_model_equal_the_authors_tiny_checkpoint() -> None:
    """The same rules at tiny size give the authors' tiny checkpoint's tensor list (less the 4.31 rotary buffers),
    and so does the tiny model itself, dtype included."""
    listed: dict[str, tuple[tuple[int, ...], str]] = {}
    for line in (REF / "keys.txt").read_text().splitlines():
        if line.startswith("#"):
            continue
        key, shape, dtype = line.split("\t")
        if not key.endswith("rotary_emb.inv_freq"):
            listed[key] = (tuple(int(x) for x in shape.strip("[]").split(",") if x.strip()), dtype)
    assert len(listed) == 335 - 2
    assert expected_layout(tiny()) == {k: s for k, (s, _) in listed.items()}
    model = GLUSModel(tiny())
    assert {k: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for k, t in model.state_dict().items()} == listed
