"""Training losses of GLUS: mask BCE + Dice (LISA's), the object contrastive loss and their weighted sum.

Total loss (GLUS-S, as the released ``model/GLUS.py`` computes it)::

    total = 1.0 * CE(assistant tokens) + 2.0 * BCE + 0.5 * Dice + 0.1 * contrastive

* BCE and Dice are computed per predicted mask (one mask = one expression at one query frame, at the frame's
  original size) and averaged over all masks of the batch (:func:`mask_losses`).
* The object contrastive loss (:class:`ObjectContrastiveLoss`) is InfoNCE on cosine similarity between a
  ``[SEG]`` prompt embedding (the anchor) and one positive + ``num_negatives`` negatives drawn from a FIFO bank
  (:class:`SegEmbeddingBank`) of detached ``[SEG]`` embeddings of recent steps.

Behaviours of the released code that are reproduced by default (each one configurable in
:class:`ContrastiveConfig`):

* The bank is updated with the whole batch *before* the loss is computed, so an anchor's positive may be the
  detached copy of another expression of the same sample.
* A positive is a bank entry of the same video and frame whose expression differs from the anchor's but refers
  to the same object set. Every bank entry that is not a positive and not of the anchor's own expression is a
  candidate negative: entries of other expressions of the same video (the hard negatives), entries of other
  videos, and also entries of same-object expressions at *other* frames.
* Negatives are drawn uniformly *with replacement*; an anchor without positives or with fewer candidate
  negatives than ``num_negatives`` contributes nothing; the step's loss is dropped unless at least two anchors
  contribute (the code tests ``count > 1``).
* Only MeViS samples enter the bank or act as anchors.

Everything is device/dtype agnostic: the arithmetic runs in at least float32 (a Dice sum over a million bf16
pixels loses the digits that matter), gradients flow to the anchors and predicted logits only.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

__all__ = [
    "dice_loss",
    "sigmoid_bce_loss",
    "mask_losses",
    "GLUSLossWeights",
    "combine_losses",
    "object_set_key",
    "SegEntryMeta",
    "SegEmbeddingBank",
    "ContrastiveConfig",
    "ContrastiveResult",
    "ContrastiveSampler",
    "object_contrastive_loss",
    "ObjectContrastiveLoss",
]

# The released code divides by ``num_masks + 1e-8`` at both levels; kept so the numbers match exactly.
_NORM_EPS = 1e-8


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least float32 (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


# ---------------------------------------------------------------------------------------------------------
# Mask losses
# ---------------------------------------------------------------------------------------------------------


def dice_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    num_masks: float,
    scale: float = 1000.0,
    eps: float = 1e-6,
) -> torch.Tensor:
    """LISA / GLUS Dice loss on sigmoid probabilities, summed over masks and divided by ``num_masks``.

    For each mask ``n``: ``1 - (2 * sum(p * t) / scale + eps) / ((sum(p) + sum(t)) / scale + eps)`` with
    ``p = sigmoid(logits[n])``. The ``scale`` shrinks the sums so that ``eps`` stays negligible against them yet
    still makes an empty prediction of an empty target cost ~0.

    Args:
        logits: ``[N, H, W]`` predicted mask logits.
        targets: ``[N, H, W]`` binary targets (any numeric or bool dtype).
        num_masks: the normaliser (GLUS passes ``N``).
        scale: divisor of the sums (1000 in LISA / GLUS).
        eps: smoothing added to numerator and denominator.

    Returns:
        Scalar tensor, ``sum_n loss_n / (num_masks + 1e-8)``, in at least float32.
    """
    _check_mask_pair(logits, targets)
    dtype = _compute_dtype(logits.dtype)
    probs = logits.to(dtype).sigmoid().flatten(1)
    tgt = targets.to(dtype).flatten(1)
    numerator = 2 * (probs / scale * tgt).sum(-1)
    denominator = (probs / scale).sum(-1) + (tgt / scale).sum(-1)
    loss = 1 - (numerator + eps) / (denominator + eps)
    return loss.sum() / (num_masks + _NORM_EPS)


def sigmoid_bce_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """Binary cross-entropy with logits, averaged over the pixels of each mask, summed over masks.

    Args:
        logits: ``[N, H, W]`` predicted mask logits.
        targets: ``[N, H, W]`` binary targets.
        num_masks: the normaliser (GLUS passes ``N``).

    Returns:
        Scalar tensor, ``sum_n mean_pixels(bce_n) / (num_masks + 1e-8)``, in at least float32.
    """
    _check_mask_pair(logits, targets)
    dtype = _compute_dtype(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits.to(dtype), targets.to(dtype), reduction="none")
    return loss.flatten(1).mean(1).sum() / (num_masks + _NORM_EPS)


def mask_losses(
    pred_masks: Sequence[torch.Tensor], gt_masks: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unweighted BCE and Dice of a batch, normalised exactly as the released GLUS code does.

    The batch comes as groups (GLUS: one group per sample and query frame, holding that frame's masks of the
    sample's expressions at the frame's original size, so sizes differ between groups). Each group's loss
    (already divided by its size) is multiplied back by its size, and the total is divided by the number of
    masks: a mean over all masks of the batch, up to the ``1e-8`` terms the code adds.

    Args:
        pred_masks: groups of predicted logits, each ``[N_g, H_g, W_g]``.
        gt_masks: matching binary targets, each ``[N_g, H_g, W_g]``.

    Returns:
        ``(bce, dice)``, two scalar tensors (unweighted; :func:`combine_losses` applies the weights).
    """
    if len(pred_masks) != len(gt_masks):
        raise ValueError(f"{len(pred_masks)} prediction groups but {len(gt_masks)} target groups")
    if len(pred_masks) == 0:
        raise ValueError("mask_losses needs at least one group of masks")
    bce_sum: torch.Tensor | float = 0.0
    dice_sum: torch.Tensor | float = 0.0
    num_masks = 0
    for pred, gt in zip(pred_masks, gt_masks):
        n = gt.shape[0]
        bce_sum = bce_sum + sigmoid_bce_loss(pred, gt, num_masks=n) * n
        dice_sum = dice_sum + dice_loss(pred, gt, num_masks=n) * n
        num_masks += n
    if num_masks == 0:
        raise ValueError("mask_losses got groups without any mask")
    return bce_sum / (num_masks + _NORM_EPS), dice_sum / (num_masks + _NORM_EPS)


def _check_mask_pair(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.dim() != 3 or logits.shape != targets.shape:
        raise ValueError(
            f"expected logits and targets of the same shape [N, H, W], got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )


# ---------------------------------------------------------------------------------------------------------
# Weights and the total
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GLUSLossWeights:
    """Weights of the loss terms (``train_ds.py`` defaults of the released code)."""

    ce: float = 1.0
    bce: float = 2.0
    dice: float = 0.5
    contrastive: float = 0.1


def combine_losses(
    ce: torch.Tensor,
    bce: torch.Tensor,
    dice: torch.Tensor,
    contrastive: torch.Tensor | None = None,
    weights: GLUSLossWeights = GLUSLossWeights(),
) -> dict[str, torch.Tensor]:
    """Weight the terms and sum them.

    Args:
        ce: scalar language-model cross-entropy over the assistant tokens.
        bce: scalar unweighted mask BCE (:func:`mask_losses`).
        dice: scalar unweighted mask Dice (:func:`mask_losses`).
        contrastive: scalar unweighted contrastive loss, or ``None`` when it was skipped this step (then it
            adds nothing and is reported as 0).

    Returns:
        ``{"ce", "bce", "dice", "contrastive", "total"}``: the *weighted* terms (as the released code logs
        them) and their sum, all scalar tensors.
    """
    out = {
        "ce": ce * weights.ce,
        "bce": bce * weights.bce,
        "dice": dice * weights.dice,
    }
    total = out["ce"] + out["bce"] + out["dice"]
    if contrastive is None:
        out["contrastive"] = torch.zeros((), dtype=total.dtype, device=total.device)
    else:
        out["contrastive"] = contrastive * weights.contrastive
        total = total + out["contrastive"]
    out["total"] = total
    return out


# ---------------------------------------------------------------------------------------------------------
# Object contrastive loss
# ---------------------------------------------------------------------------------------------------------


def object_set_key(obj_ids: Iterable[int | str]) -> str:
    """Canonical key of the object set an expression refers to: sorted integer ids, e.g. ``"1,3"``.

    Two expressions are positives of each other when their keys are equal (the released code compares the
    sorted integer arrays of ``obj_id``).
    """
    return ",".join(str(i) for i in sorted(int(x) for x in obj_ids))


@dataclass(frozen=True)
class SegEntryMeta:
    """Who a ``[SEG]`` embedding belongs to.

    Attributes:
        video: video id (unique within ``dataset``).
        expression: expression key within the video (e.g. MeViS ``exp_id``).
        objects: object-set key (:func:`object_set_key`).
        frame: frame name (or index as a string) of the query frame the embedding segments.
        dataset: dataset name; by default only ``"mevis"`` entries take part (released behaviour).
    """

    video: str
    expression: str
    objects: str
    frame: str
    dataset: str = "mevis"

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SegEntryMeta":
        return cls(**{f.name: str(data[f.name]) for f in dataclasses.fields(cls)})


class SegEmbeddingBank:
    """FIFO of the last ``capacity`` detached ``[SEG]`` embeddings with their :class:`SegEntryMeta`.

    Owned by the trainer (not the model) and saved with the training state so a resumed run sees the same bank.
    Embeddings are stored detached, with the device and dtype they were pushed with.
    """

    def __init__(self, capacity: int = 512) -> None:
        if capacity <= 0:
            raise ValueError(f"bank capacity must be positive, got {capacity}")
        self.capacity = capacity
        self._entries: deque[tuple[SegEntryMeta, torch.Tensor]] = deque()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def metas(self) -> list[SegEntryMeta]:
        """Metadata of the stored entries, oldest first."""
        return [m for m, _ in self._entries]

    def embeddings(self) -> torch.Tensor:
        """The stored embeddings, oldest first: ``[M, D]`` (``M = len(self)``, must be > 0)."""
        if not self._entries:
            raise ValueError("the [SEG] embedding bank is empty")
        return torch.stack([e for _, e in self._entries])

    def push(self, embeddings: torch.Tensor, metas: Sequence[SegEntryMeta]) -> None:
        """Append embeddings (detached copies), evicting the oldest beyond ``capacity``.

        Args:
            embeddings: ``[A, D]``.
            metas: ``A`` entries, in the order of the rows.
        """
        if embeddings.dim() != 2 or embeddings.shape[0] != len(metas):
            raise ValueError(f"expected [A, D] embeddings for {len(metas)} metas, got {tuple(embeddings.shape)}")
        if self._entries and embeddings.shape[1] != self._entries[0][1].shape[0]:
            raise ValueError(
                f"embedding width {embeddings.shape[1]} differs from the bank's {self._entries[0][1].shape[0]}"
            )
        for meta, emb in zip(metas, embeddings.detach()):
            self._entries.append((meta, emb.clone()))
        while len(self._entries) > self.capacity:
            self._entries.popleft()

    def clear(self) -> None:
        self._entries.clear()

    def state_dict(self) -> dict[str, Any]:
        """CPU copy of the bank: ``{"capacity", "embeddings": [M, D] or None, "metas": [dict]}``."""
        return {
            "capacity": self.capacity,
            "embeddings": self.embeddings().cpu() if self._entries else None,
            "metas": [m.to_dict() for m in self.metas],
        }

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device | str | None = None) -> None:
        """Restore :meth:`state_dict` output, placing the embeddings on ``device`` (default: as saved)."""
        metas = [SegEntryMeta.from_dict(m) for m in state["metas"]]
        embeddings = state["embeddings"]
        if (embeddings is None) != (len(metas) == 0) or (embeddings is not None and len(embeddings) != len(metas)):
            raise ValueError("inconsistent bank state: embeddings and metas differ in length")
        self.capacity = int(state["capacity"])
        self._entries.clear()
        if embeddings is not None:
            self.push(embeddings.to(device) if device is not None else embeddings, metas)


@dataclass
class ContrastiveConfig:
    """Object contrastive loss settings; the defaults reproduce the released code.

    Attributes:
        temperature: InfoNCE temperature on cosine similarities.
        bank_size: FIFO capacity of the embedding bank.
        num_negatives: negatives drawn (with replacement) per anchor; fewer candidates -> anchor skipped.
        datasets: datasets whose samples enter the bank and act as anchors (``None``: all).
        update_bank_first: push the batch into the bank before computing the loss (released) instead of after.
        negatives_exclude_same_objects: also keep entries of the anchor's object set at other frames out of the
            negatives (the released code lets them in).
        min_anchors: the loss is used only when at least this many anchors contribute (released: 2).
    """

    temperature: float = 0.07
    bank_size: int = 512
    num_negatives: int = 128
    datasets: tuple[str, ...] | None = ("mevis",)
    update_bank_first: bool = True
    negatives_exclude_same_objects: bool = False
    min_anchors: int = 2


#: ``sampler(anchor_row, positive_bank_indices, negative_bank_indices) -> (positive, negatives)``: see
#: :func:`object_contrastive_loss`.
ContrastiveSampler = Callable[[int, list[int], list[int]], tuple[int, Sequence[int]]]


@dataclass
class ContrastiveResult:
    """Outcome of one contrastive-loss evaluation.

    Attributes:
        loss: scalar, mean InfoNCE over contributing anchors (unweighted); 0 when skipped.
        skipped: True when fewer than ``min_anchors`` anchors contributed (the loss must not be added).
        anchor_indices: ``[K]`` rows of the input anchors that contributed.
        bank_indices: ``[K, 1 + num_negatives]`` indices into the bank snapshot used (column 0 the positive).
    """

    loss: torch.Tensor
    skipped: bool
    anchor_indices: torch.Tensor
    bank_indices: torch.Tensor

    @property
    def num_anchors(self) -> int:
        return int(self.anchor_indices.numel())


def _candidates(
    anchor: SegEntryMeta, bank_metas: Sequence[SegEntryMeta], exclude_same_objects: bool
) -> tuple[list[int], list[int]]:
    """Indices of the positive and candidate-negative bank entries of one anchor."""
    positives: list[int] = []
    negatives: list[int] = []
    for i, m in enumerate(bank_metas):
        same_video = m.dataset == anchor.dataset and m.video == anchor.video
        same_objects = same_video and m.objects == anchor.objects
        if same_objects and m.expression != anchor.expression and m.frame == anchor.frame:
            positives.append(i)
        elif same_video and m.expression == anchor.expression:
            continue  # the anchor's own expression is never a negative, whatever the frame
        elif exclude_same_objects and same_objects:
            continue
        else:
            negatives.append(i)
    return positives, negatives


def object_contrastive_loss(
    anchors: torch.Tensor,
    metas: Sequence[SegEntryMeta],
    bank: SegEmbeddingBank,
    config: ContrastiveConfig | None = None,
    generator: torch.Generator | None = None,
    sampler: ContrastiveSampler | None = None,
) -> ContrastiveResult:
    """InfoNCE of ``[SEG]`` embeddings against a bank of past ones; pushes the batch into ``bank``.

    For a contributing anchor ``a`` with positive ``p`` and drawn negatives ``n_1..n_K``:
    ``-log(exp(cos(a, p) / tau) / (exp(cos(a, p) / tau) + sum_k exp(cos(a, n_k) / tau)))``.

    Args:
        anchors: ``[A, D]`` ``[SEG]`` prompt embeddings of the batch (with gradients).
        metas: ``A`` :class:`SegEntryMeta`, one per row.
        bank: the trainer's bank; updated before or after the loss as ``config.update_bank_first`` says.
        config: settings (``None``: :class:`ContrastiveConfig` defaults, the released behaviour).
        generator: CPU generator for the draws (the positive among several, the negatives); ``None`` uses the
            global one.
        sampler: replaces the random draws: called as ``sampler(row, positives, negatives)`` for every anchor
            that has a positive and enough negatives, it returns ``(positive, negatives)`` as bank indices
            (replaying a recorded run, whose draws came from another random generator).

    Returns:
        :class:`ContrastiveResult`. Gradients reach ``anchors`` only: bank entries are detached.
    """
    config = config if config is not None else ContrastiveConfig()
    if anchors.dim() != 2 or anchors.shape[0] != len(metas):
        raise ValueError(f"expected [A, D] anchors for {len(metas)} metas, got {tuple(anchors.shape)}")
    selected = [i for i, m in enumerate(metas) if config.datasets is None or m.dataset in config.datasets]
    sel_metas = [metas[i] for i in selected]
    sel_anchors = anchors[selected]

    if config.update_bank_first and selected:
        bank.push(sel_anchors, sel_metas)
    bank_metas = bank.metas

    rows: list[int] = []
    index_rows: list[torch.Tensor] = []
    for row, meta in zip(selected, sel_metas):
        positives, negatives = _candidates(meta, bank_metas, config.negatives_exclude_same_objects)
        if not positives or len(negatives) < config.num_negatives:
            continue
        if sampler is not None:
            positive, drawn = sampler(row, positives, negatives)
            index_rows.append(torch.tensor([int(positive), *(int(i) for i in drawn)], dtype=torch.long))
        else:
            # Draw order of the released code: the negatives first, then the positive.
            neg = torch.randint(len(negatives), (config.num_negatives,), generator=generator, device="cpu")
            pos = torch.randint(len(positives), (1,), generator=generator, device="cpu")
            index_rows.append(torch.cat([torch.tensor(positives)[pos], torch.tensor(negatives)[neg]]))
        rows.append(row)

    dtype = _compute_dtype(anchors.dtype)
    anchor_indices = torch.tensor(rows, dtype=torch.long)
    if rows:
        bank_indices = torch.stack(index_rows)
        bank_emb = bank.embeddings().to(device=anchors.device, dtype=dtype)
        cands = bank_emb[bank_indices.to(anchors.device)]  # [K, 1 + num_negatives, D]
        a = anchors[anchor_indices.to(anchors.device)].to(dtype)  # [K, D]
        logits = F.cosine_similarity(a.unsqueeze(1), cands, dim=-1) / config.temperature  # [K, 1 + N]
        # -log(e^{l_0} / sum_j e^{l_j}), computed stably
        per_anchor = torch.logsumexp(logits, dim=-1) - logits[:, 0]
        loss = per_anchor.mean()
    else:
        bank_indices = torch.empty((0, 1 + config.num_negatives), dtype=torch.long)
        loss = torch.zeros((), dtype=dtype, device=anchors.device)

    skipped = len(rows) < config.min_anchors
    if skipped:
        loss = torch.zeros((), dtype=dtype, device=anchors.device)

    if not config.update_bank_first and selected:
        bank.push(sel_anchors, sel_metas)
    return ContrastiveResult(loss=loss, skipped=skipped, anchor_indices=anchor_indices, bank_indices=bank_indices)


class ObjectContrastiveLoss:
    """The trainer's contrastive-loss state: config, bank and random generator, saved together for resume."""

    def __init__(self, config: ContrastiveConfig | None = None, seed: int = 0,
                 sampler: ContrastiveSampler | None = None) -> None:
        self.config = config if config is not None else ContrastiveConfig()
        self.bank = SegEmbeddingBank(self.config.bank_size)
        self.generator = torch.Generator().manual_seed(seed)
        self.sampler = sampler  # None: draw from ``generator`` (see object_contrastive_loss)

    def __call__(self, anchors: torch.Tensor, metas: Sequence[SegEntryMeta]) -> ContrastiveResult:
        """See :func:`object_contrastive_loss`; ``anchors`` is ``[A, D]``."""
        result = object_contrastive_loss(anchors, metas, self.bank, self.config, self.generator, self.sampler)
        if result.skipped:
            logger.debug(
                "contrastive loss skipped: %d anchor(s) contributed, bank holds %d", result.num_anchors, len(self.bank)
            )
        return result

    def state_dict(self) -> dict[str, Any]:
        return {"bank": self.bank.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device | str | None = None) -> None:
        self.bank.load_state_dict(state["bank"], device=device)
        self.generator.set_state(state["generator"])
