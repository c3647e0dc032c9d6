"""The multimodal LLM of GLUS (LLaVA / LISA style): frames -> CLIP -> pooled, projected tokens -> LLaMA -> ``[SEG]``.

Data flow (full size in brackets):

* a frame ``[3, 224, 224]`` -> frozen CLIP, hidden layer ``select_layer`` without CLS: ``[256, 1024]``
  -> ``AvgPool1d(pool_kernel)`` over the tokens in raster order: ``[64, 1024]`` -> ``mm_projector``
  ``Linear(1024, 4096)``: ``[64, 4096]`` (:meth:`GLUSMLLM.encode_frames_for_llm`);
* every ``<image>`` placeholder (id ``image_token_index`` = -200) of the prompt ids is replaced by its frame's
  64 embeddings, text ids by ``embed_tokens`` rows (:meth:`GLUSMLLM.build_inputs_embeds`);
* LLaMA runs on the embeddings (:meth:`GLUSMLLM.forward_llm`, optionally from a KV cache of a shared prefix);
* the ``[SEG]`` embedding of a query frame is ``text_hidden_fcs(h)`` (:meth:`GLUSMLLM.seg_embedding`), ``h`` the
  last-layer, post-RMSNorm hidden state at the position whose next-token prediction is that ``[SEG]``.

State-dict keys equal the released checkpoints': ``model.embed_tokens.*``, ``model.layers.*``, ``model.norm.*``,
``lm_head.*``, ``model.mm_projector.*``, ``model.text_hidden_fcs.0.{0,2}.*``; SAM-2 is attached later as
``model.visual_model`` (:meth:`GLUSMLLM.attach_visual_model`). The CLIP tower is held outside the module tree
(it is not in the checkpoints) but follows ``.to()`` / ``.half()`` etc. of this module.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import DynamicCache, LlamaConfig, LlamaModel
from transformers.cache_utils import Cache
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from glus.config import GLUSConfig, TextConfig
from glus.model.vision_tower import ClipVisionTower
from glus.prompts import IGNORE_INDEX

logger = logging.getLogger(__name__)


def llama_config(text: TextConfig, attn_implementation: str = "sdpa") -> LlamaConfig:
    """The ``transformers`` config of the LLaMA part described by ``text``."""
    cfg = LlamaConfig(
        vocab_size=text.vocab_size,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        num_hidden_layers=text.num_hidden_layers,
        num_attention_heads=text.num_attention_heads,
        num_key_value_heads=text.num_key_value_heads,
        max_position_embeddings=text.max_position_embeddings,
        rms_norm_eps=text.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": text.rope_theta},
        hidden_act=text.hidden_act,
        bos_token_id=text.bos_token_id,
        eos_token_id=text.eos_token_id,
        pad_token_id=text.pad_token_id,
        tie_word_embeddings=text.tie_word_embeddings,
        use_cache=False,
    )
    cfg._attn_implementation = attn_implementation
    return cfg


@dataclass
class EmbeddedInputs:
    """A batch of prompts with every ``<image>`` expanded into its frame embeddings (right-padded).

    Attributes:
        inputs_embeds: ``[B, L', H]``; padding rows are zeros.
        attention_mask: ``[B, L']`` long, 1 for real positions, 0 for padding (always at the end of a row).
        token_positions: ``[B, L]`` long; the expanded position of every input id (of the first embedding for
            an ``<image>``), -1 past the end of a shorter row. ``L`` = the longest id row.
        lengths: ``[B]`` long, real expanded length of each row.
        labels: ``[B, L']`` long or ``None``; the given labels at text positions, ``IGNORE_INDEX`` at image and
            padding positions.
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    token_positions: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.inputs_embeds.shape[0]

    @property
    def last_positions(self) -> torch.Tensor:
        """``[B]``: the last real position of each row (where the next token is predicted)."""
        return self.lengths - 1


@dataclass
class LLMOutput:
    """Result of :meth:`GLUSMLLM.forward_llm`.

    Attributes:
        logits: ``[B, L', V]`` or ``None`` when not requested.
        hidden_states: ``[B, L', H]`` last decoder layer after the final RMSNorm (``output_hidden_states[-1]``
            of the released code in eval mode).
        past_key_values: the KV cache after this call (``None`` unless ``use_cache``).
    """

    logits: torch.Tensor | None
    hidden_states: torch.Tensor
    past_key_values: Cache | None = None


@dataclass(frozen=True)
class PrefixCache:
    """The KV cache of a prompt prefix computed once (batch 1), reusable by any number of continuations.

    Attributes:
        cache: the LLaMA KV cache of the prefix (never mutated by :meth:`GLUSMLLM.forward_continuation`).
        length: number of prefix positions (expanded).
        hidden_states: ``[1, length, H]`` final hidden states of the prefix.
    """

    cache: DynamicCache
    length: int
    hidden_states: torch.Tensor

    def expanded(self, batch_size: int) -> DynamicCache:
        """A fresh cache holding the prefix keys/values broadcast to ``batch_size`` rows."""
        data = [
            (layer.keys.expand(batch_size, -1, -1, -1), layer.values.expand(batch_size, -1, -1, -1))
            for layer in self.cache.layers
        ]
        return DynamicCache(ddp_cache_data=data)


@dataclass
class NextToken:
    """Greedy next token at the last real position of every row (:meth:`GLUSMLLM.generate_one_token`).

    Attributes:
        token_ids: ``[B]`` long, argmax of the logits.
        logits: ``[B, V]`` logits at that position.
        hidden: ``[B, H]`` final hidden state there (the state that predicts the generated token).
        seg_embedding: ``[B, prompt_dim]`` ``text_hidden_fcs(hidden)``: the SAM-2 prompt if the token is ``[SEG]``.
    """

    token_ids: torch.Tensor
    logits: torch.Tensor
    hidden: torch.Tensor
    seg_embedding: torch.Tensor


class GLUSMLLM(nn.Module):
    """CLIP (outside the state dict) + token pooling + ``mm_projector`` + LLaMA + ``text_hidden_fcs``.

    Args:
        config: sizes (``config.text``, ``config.vision.hidden_size``, ``pool_kernel``, ``prompt_dim``,
            ``image_token_index``).
        vision_tower: the frozen CLIP tower; may be set later with :meth:`set_vision_tower`.
        attn_implementation: LLaMA attention kernel (``"sdpa"``, ``"eager"`` or any ``transformers`` name).
    """

    def __init__(
        self,
        config: GLUSConfig,
        vision_tower: ClipVisionTower | None = None,
        attn_implementation: str = "sdpa",
    ) -> None:
        super().__init__()
        self.config = config
        hidden = config.text.hidden_size
        self.model = LlamaModel(llama_config(config.text, attn_implementation))
        self.lm_head = nn.Linear(hidden, config.text.vocab_size, bias=False)
        # Extra modules live on the LlamaModel so that their keys read model.mm_projector / model.text_hidden_fcs.
        self.model.mm_projector = nn.Linear(config.vision.hidden_size, hidden)
        self.model.text_hidden_fcs = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Linear(hidden, hidden),
                    nn.ReLU(),
                    nn.Linear(hidden, config.prompt_dim),
                    nn.Dropout(0.0),
                )
            ]
        )
        self.token_pool = nn.AvgPool1d(kernel_size=config.pool_kernel, stride=config.pool_kernel)
        # A plain list keeps the tower out of the module tree, hence out of state_dict / parameters().
        self._vision_tower: list[ClipVisionTower] = []
        if vision_tower is not None:
            self.set_vision_tower(vision_tower)

    # ------------------------------------------------------------------ sub-modules
    @property
    def vision_tower(self) -> ClipVisionTower | None:
        return self._vision_tower[0] if self._vision_tower else None

    def set_vision_tower(self, tower: ClipVisionTower) -> None:
        """Attach the CLIP tower (moved to this module's device and dtype)."""
        if tower.hidden_size != self.config.vision.hidden_size:
            raise ValueError(
                f"CLIP width {tower.hidden_size} != mm_projector input {self.config.vision.hidden_size}"
            )
        if tower.num_patches % self.config.pool_kernel:
            raise ValueError(f"{tower.num_patches} CLIP patches are not divisible by pool_kernel")
        weight = self.lm_head.weight
        if weight.device.type != "meta":
            tower.to(device=weight.device, dtype=weight.dtype)
        self._vision_tower[:] = [tower]

    @property
    def visual_model(self) -> nn.Module | None:
        """SAM-2, once attached (key prefix ``model.visual_model.``)."""
        return getattr(self.model, "visual_model", None)

    def attach_visual_model(self, module: nn.Module) -> None:
        """Register SAM-2 at ``model.visual_model`` so its keys read ``model.visual_model.*``."""
        self.model.visual_model = module

    @property
    def mm_projector(self) -> nn.Linear:
        return self.model.mm_projector

    @property
    def text_hidden_fcs(self) -> nn.ModuleList:
        return self.model.text_hidden_fcs

    @property
    def tokens_per_frame(self) -> int:
        """LLM tokens per frame (64 at full size)."""
        return self.config.image_tokens_per_frame

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        # Device and dtype moves (.to(), .half(), ...) reach the CLIP tower although it is not a registered sub-module.
        super()._apply(fn, recurse)
        if self._vision_tower:
            self._vision_tower[0]._apply(fn, recurse)
        return self

    # ------------------------------------------------------------------ frames -> embeddings
    def project_clip_features(self, features: torch.Tensor) -> torch.Tensor:
        """Pool and project CLIP patch features.

        Args:
            features: ``[N, P, C]`` CLIP patch tokens in raster order (P = 256, C = 1024 at full size).

        Returns:
            ``[N, P // pool_kernel, H]``: ``AvgPool1d`` over the token axis, then ``mm_projector``.
        """
        pooled = self.token_pool(features.transpose(1, 2)).transpose(1, 2)
        proj = self.model.mm_projector
        return proj(pooled.to(dtype=proj.weight.dtype))

    def encode_frames_for_llm(self, pixels_clip: torch.Tensor) -> torch.Tensor:
        """Frames -> LLM input embeddings. Each frame is encoded independently, so results can be cached per frame.

        Args:
            pixels_clip: ``[N, 3, 224, 224]`` from :func:`glus.model.vision_tower.clip_pixel_values`.

        Returns:
            ``[N, tokens_per_frame, H]`` (64 x 4096 at full size); CLIP runs without gradients, the projector
            with them when grad mode is on.
        """
        tower = self.vision_tower
        if tower is None:
            raise ValueError("no CLIP vision tower attached (GLUSMLLM.set_vision_tower)")
        return self.project_clip_features(tower(pixels_clip))

    def build_inputs_embeds(
        self,
        input_ids: torch.Tensor | Sequence[Sequence[int] | torch.Tensor],
        image_embeds: torch.Tensor | Sequence[torch.Tensor],
        labels: torch.Tensor | Sequence[Sequence[int] | torch.Tensor] | None = None,
    ) -> EmbeddedInputs:
        """Embed prompt ids, expanding every ``<image>`` placeholder into its frame's embeddings.

        Args:
            input_ids: ``[B, L]`` long tensor, or B sequences of ids of any lengths (no padding inside);
                ``config.image_token_index`` (-200) marks an image.
            image_embeds: ``[N_img, T, H]`` or a sequence of ``[T, H]``, consumed in order: row 0's images
                left to right, then row 1's, ... (as LLaVA does). N_img must equal the number of placeholders.
            labels: optional, same shape as ``input_ids`` (e.g. -100 outside the assistant turns).

        Returns:
            :class:`EmbeddedInputs`; rows are right-padded to the longest expanded row.
        """
        device = self.model.embed_tokens.weight.device
        rows = _as_rows(input_ids, device)
        label_rows = None if labels is None else _as_rows(labels, device)
        images = list(image_embeds)
        image_index = self.config.image_token_index
        n_placeholders = sum(int((r == image_index).sum()) for r in rows)
        if n_placeholders != len(images):
            raise ValueError(f"{n_placeholders} image placeholders but {len(images)} image embeddings")
        if label_rows is not None and [len(r) for r in label_rows] != [len(r) for r in rows]:
            raise ValueError("labels must have the same shape as input_ids")

        embed = self.model.embed_tokens
        dtype, device = embed.weight.dtype, embed.weight.device
        next_image = 0
        row_embeds: list[torch.Tensor] = []
        row_labels: list[torch.Tensor] = []
        row_positions: list[torch.Tensor] = []
        for b, ids in enumerate(rows):
            is_image = ids == image_index
            text = embed(ids.masked_fill(is_image, 0))  # [L, H]; placeholder rows are discarded below
            image_slots = torch.nonzero(is_image).flatten().tolist()
            pieces, label_pieces, spans = [], [], torch.ones(len(ids), dtype=torch.long)
            start = 0
            for slot in image_slots:
                img = images[next_image].to(device=device, dtype=dtype)
                next_image += 1
                if img.ndim != 2 or img.shape[-1] != text.shape[-1]:
                    raise ValueError(f"image embedding of shape {tuple(img.shape)}; expected [T, {text.shape[-1]}]")
                pieces += [text[start:slot], img]
                spans[slot] = img.shape[0]
                if label_rows is not None:
                    ignore = torch.full((img.shape[0],), IGNORE_INDEX, dtype=torch.long, device=device)
                    label_pieces += [label_rows[b][start:slot], ignore]
                start = slot + 1
            pieces.append(text[start:])
            if label_rows is not None:
                label_pieces.append(label_rows[b][start:])
                row_labels.append(torch.cat(label_pieces))
            row_embeds.append(torch.cat(pieces))
            row_positions.append(torch.cumsum(spans, 0) - spans)

        lengths = torch.tensor([e.shape[0] for e in row_embeds], dtype=torch.long, device=device)
        max_len = int(lengths.max())
        max_ids = max(len(r) for r in rows)
        batch = len(rows)
        inputs_embeds = torch.zeros(batch, max_len, embed.weight.shape[1], dtype=dtype, device=device)
        attention_mask = torch.zeros(batch, max_len, dtype=torch.long, device=device)
        token_positions = torch.full((batch, max_ids), -1, dtype=torch.long, device=device)
        out_labels = None
        if label_rows is not None:
            out_labels = torch.full((batch, max_len), IGNORE_INDEX, dtype=torch.long, device=device)
        padded = []
        for b, e in enumerate(row_embeds):
            n = e.shape[0]
            # torch.cat keeps the autograd graph to the projector / embeddings (no in-place writes on leaves).
            padded.append(torch.cat([e, inputs_embeds[b, n:]]) if n < max_len else e)
            attention_mask[b, :n] = 1
            token_positions[b, : len(row_positions[b])] = row_positions[b].to(device)
            if out_labels is not None:
                out_labels[b, :n] = row_labels[b]
        return EmbeddedInputs(
            inputs_embeds=torch.stack(padded),
            attention_mask=attention_mask,
            token_positions=token_positions,
            lengths=lengths,
            labels=out_labels,
        )

    # ------------------------------------------------------------------ LLM
    def forward_llm(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool = False,
        position_ids: torch.Tensor | None = None,
        compute_logits: bool = True,
    ) -> LLMOutput:
        """Run LLaMA on embeddings.

        Args:
            inputs_embeds: ``[B, L, H]``.
            attention_mask: ``[B, past + L]`` (1 = attend); ``None`` = all ones. Padding must be on the right.
            past_key_values: a cache holding ``past`` positions for all B rows (mutated: new keys are appended).
            use_cache: return the (updated) cache.
            position_ids: ``[B or 1, L]``; default ``past + arange(L)``.
            compute_logits: also apply ``lm_head`` to every position.

        Returns:
            :class:`LLMOutput` with ``logits [B, L, V]`` and ``hidden_states [B, L, H]`` (post final RMSNorm).
        """
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache()
        out = self.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=past_key_values,
            use_cache=use_cache,
        )
        hidden = out.last_hidden_state
        logits = self.lm_head(hidden) if compute_logits else None
        return LLMOutput(logits=logits, hidden_states=hidden, past_key_values=out.cache if use_cache else None)

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool = False,
    ) -> LLMOutput:
        """Same as :meth:`forward_llm` (so wrappers such as peft can call the module)."""
        return self.forward_llm(inputs_embeds, attention_mask, past_key_values=past_key_values, use_cache=use_cache)

    def prefill(self, prefix: EmbeddedInputs) -> PrefixCache:
        """Run an expression-independent prefix (system text + context frames) once.

        Args:
            prefix: one row (B = 1) without padding.

        Returns:
            :class:`PrefixCache` for :meth:`forward_continuation` / :meth:`generate_one_token`.
        """
        if prefix.batch_size != 1 or bool((prefix.attention_mask == 0).any()):
            raise ValueError("a prefix must be a single unpadded row")
        cache = DynamicCache()
        out = self.forward_llm(
            prefix.inputs_embeds, prefix.attention_mask, past_key_values=cache, use_cache=True, compute_logits=False
        )
        return PrefixCache(cache=cache, length=prefix.inputs_embeds.shape[1], hidden_states=out.hidden_states)

    def forward_continuation(
        self, prefix: PrefixCache, continuation: EmbeddedInputs, compute_logits: bool = True
    ) -> LLMOutput:
        """Run B continuations of one cached prefix (the prefix broadcast over the batch).

        Equal to running ``prefix + continuation[b]`` from scratch for every row b (up to float rounding).

        Args:
            prefix: from :meth:`prefill`.
            continuation: ``B`` right-padded rows that follow the prefix.

        Returns:
            :class:`LLMOutput` for the continuation positions only: ``logits [B, L, V]``,
            ``hidden_states [B, L, H]``, and the cache of prefix + continuation.
        """
        batch, length = continuation.inputs_embeds.shape[:2]
        if length == 0:
            raise ValueError("empty continuation")
        device = continuation.inputs_embeds.device
        mask = torch.cat(
            [torch.ones(batch, prefix.length, dtype=torch.long, device=device), continuation.attention_mask], dim=1
        )
        positions = (prefix.length + torch.arange(length, device=device)).unsqueeze(0)
        return self.forward_llm(
            continuation.inputs_embeds,
            mask,
            past_key_values=prefix.expanded(batch),
            use_cache=True,
            position_ids=positions,
            compute_logits=compute_logits,
        )

    def seg_embedding(self, hidden: torch.Tensor) -> torch.Tensor:
        """``text_hidden_fcs``: ``[..., H]`` -> ``[..., prompt_dim]`` (the SAM-2 sparse prompt of a ``[SEG]``)."""
        return self.model.text_hidden_fcs[0](hidden)

    def generate_one_token(self, inputs: EmbeddedInputs, prefix: PrefixCache | None = None) -> NextToken:
        """Greedy next token after each row (the released inference generates exactly one token per query frame).

        Args:
            inputs: the prompts (or, with ``prefix``, their continuations after the prefix); right-padded.
            prefix: optional cached prefix shared by all rows.

        Returns:
            :class:`NextToken` taken at each row's last real position; its ``seg_embedding`` is the released
            code's ``[SEG]`` embedding when the token is ``[SEG]`` (last prompt position, README quirk 5).
        """
        if prefix is None:
            out = self.forward_llm(inputs.inputs_embeds, inputs.attention_mask, compute_logits=False)
        else:
            out = self.forward_continuation(prefix, inputs, compute_logits=False)
        rows = torch.arange(inputs.batch_size, device=out.hidden_states.device)
        hidden = out.hidden_states[rows, inputs.last_positions.to(rows.device)]
        logits = self.lm_head(hidden)
        return NextToken(
            token_ids=logits.argmax(dim=-1), logits=logits, hidden=hidden, seg_embedding=self.seg_embedding(hidden)
        )

    # ------------------------------------------------------------------ training / memory helpers
    def gradient_checkpointing_enable(self) -> None:
        """Recompute decoder-layer activations in the backward pass (non-reentrant checkpointing)."""
        kwargs = {"use_reentrant": False}
        if hasattr(self.model, "activation_checkpointing_enable"):  # transformers >= 5.2x name
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def gradient_checkpointing_disable(self) -> None:
        if hasattr(self.model, "activation_checkpointing_disable"):
            self.model.activation_checkpointing_disable()
        else:
            self.model.gradient_checkpointing_disable()

    @property
    def is_gradient_checkpointing(self) -> bool:
        return bool(self.model.gradient_checkpointing)

    def materialize_rotary(self, device: torch.device | str | None = None) -> None:
        """Recompute the rotary ``inv_freq`` buffers, e.g. after building on the meta device and loading weights
        with ``load_state_dict(..., assign=True)`` (non-persistent buffers are not in any checkpoint)."""
        device = torch.device(device) if device is not None else self.lm_head.weight.device
        with torch.device(device):
            self.model.rotary_emb = LlamaRotaryEmbedding(config=self.model.config)


def _as_rows(ids: torch.Tensor | Sequence[Sequence[int] | torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    if isinstance(ids, torch.Tensor):
        if ids.ndim != 2:
            raise ValueError(f"expected [B, L] ids, got shape {tuple(ids.shape)}")
        return [row.to(device=device, dtype=torch.long) for row in ids]
    rows = [torch.as_tensor(r, dtype=torch.long, device=device).flatten() for r in ids]
    if not rows:
        raise ValueError("empty batch")
    return rows


def build_mllm(
    config: GLUSConfig,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    vision_tower: ClipVisionTower | None = None,
    attn_implementation: str = "sdpa",
) -> GLUSMLLM:
    """Build a :class:`GLUSMLLM` directly in ``dtype`` on ``device`` (``"meta"`` allocates nothing, for loaders
    that then call ``load_state_dict(assign=True)`` and :meth:`GLUSMLLM.materialize_rotary`)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device if device is not None else "cpu"):
            mllm = GLUSMLLM(config, attn_implementation=attn_implementation)
    finally:
        torch.set_default_dtype(previous)
    if vision_tower is not None:
        mllm.set_vision_tower(vision_tower)
    return mllm
