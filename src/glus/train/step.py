"""One optimizer step of GLUS training: forward, backward over the micro-batches, clipping, AdamW, lr schedule.

This is the step ``glus train`` runs and the one ``glus train check-official`` holds against the authors' recorded
DeepSpeed step (``glus.train.official``). What the authors' DeepSpeed engine does and this step does the same way:

* each micro-batch's total loss is divided by the number of micro-batches (gradient accumulation) and
  back-propagated; the step sees the sum;
* the global L2 norm of all trainable gradients is clipped to ``grad_clip`` with the coefficient
  ``min(1, grad_clip / (norm + 1e-6))`` (``torch.nn.utils.clip_grad_norm_``);
* a trainable parameter that autograd gives no gradient (the mask decoder's ``conv_s0/conv_s1`` and IoU /
  object-score heads, used only under ``no_grad`` or not at all) is left out of the step; DeepSpeed holds zeros
  for it, which in Adam without weight decay moves nothing either.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Sequence

import torch
from torch import nn

from glus.data.training import TrainingSample
from glus.model.glus import GLUSModel, TrainForward
from glus.model.losses import GLUSLossWeights, ObjectContrastiveLoss

__all__ = ["StepSettings", "StepResult", "released_parameter_names", "train_step", "adamw"]


@dataclass(frozen=True)
class StepSettings:
    """What one step does beyond the model (defaults: the authors' ``train_ds.py``).

    Attributes:
        weights: loss weights (ce 1.0, bce 2.0, dice 0.5, contrastive 0.1).
        ce_on: ``"seg"`` (released: cross-entropy only at ``[SEG]`` targets) or ``"assistant"`` (every answer token,
            as the paper describes).
        memory_grad: let gradients flow through SAM-2's memory attention (released: no, it runs under no_grad).
        memory_bank: decode query frames through the memory bank (``False``: the "no memory bank" ablation).
        image_grad: SAM-2 image features with gradients (released: no), to train the image encoder too.
        prompt_grad: the mask loss reaches the ``[SEG]`` prompts, seg head and language model (released: yes).
        click_weight: weight of the click-prompt mask term (:mod:`glus.model.clicks`; released: 0, off).
        clicks_only: this step trains SAM-2 alone on click prompts (the language model does not run).
        seg_click_weight: weight of the ``[SEG]``-to-click term (``GLUSModel.seg_click_pairs``; released: 0, off).
        grad_clip: global gradient-norm limit (``None``: no clipping).
    """

    weights: GLUSLossWeights = field(default_factory=GLUSLossWeights)
    ce_on: str = "seg"
    memory_grad: bool = False
    memory_bank: bool = True
    image_grad: bool = False
    prompt_grad: bool = True
    click_weight: float = 0.0
    clicks_only: bool = False
    seg_click_weight: float = 0.0
    grad_clip: float | None = 1.0


@dataclass
class StepResult:
    """One optimizer step.

    Attributes:
        losses: the weighted loss terms averaged over the micro-batches (floats).
        grad_norm: global L2 norm of the trainable gradients before clipping.
        lr: the learning rate the step used (first parameter group).
        outputs: the last micro-batch's :class:`TrainForward` (embeddings and logits, for inspection).
    """

    losses: dict[str, float]
    grad_norm: float
    lr: float
    outputs: TrainForward


def released_parameter_names(model: nn.Module) -> dict[str, nn.Parameter]:
    """The parameters of a (peft-wrapped) :class:`GLUSModel` by their released checkpoint names.

    peft's ``base_model.model.`` prefix is dropped (LoRA tensors keep peft's ``lora_A.default`` names, as the
    authors' DeepSpeed engine names them) and SAM-2's transformers names become Meta's, so the names are those
    of the released state dict and of the authors' training records.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    key_map = base.sam2.key_map
    prefix = "model.visual_model."
    out: dict[str, nn.Parameter] = {}
    for name, param in base.named_parameters():
        if name.startswith(prefix):
            names = [name[len(prefix):]]
            key_map.report_in_meta(names)  # one Meta name per tensor, except the stacked point embeddings
            name = prefix + names[0] if len(names) == 1 else name
        out[name] = param
    return out


def adamw(parameters: Sequence[nn.Parameter], lr: float = 3e-4, betas: tuple[float, float] = (0.9, 0.95),
          eps: float = 1e-8, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW with the authors' settings (DeepSpeed's FusedAdam in AdamW mode: lr 3e-4, betas (0.9, 0.95), no decay)."""
    return torch.optim.AdamW(list(parameters), lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def train_step(model: GLUSModel, micro_batches: Sequence[Sequence[TrainingSample]], optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler | None = None, *,
               contrastive: ObjectContrastiveLoss | None = None, settings: StepSettings = StepSettings(),
               on_gradients: Callable[[], None] | None = None,
               no_sync: Callable[[], ContextManager] | None = None,
               autocast: Callable[[], ContextManager] | None = None) -> StepResult:
    """Run one optimizer step over ``micro_batches`` (see the module docstring).

    Args:
        model: the model in train mode (peft-wrapped or not), trainable set already chosen.
        micro_batches: one or more lists of samples; their losses are averaged into one step.
        optimizer, scheduler: stepped once each (the scheduler after the optimizer).
        contrastive: the contrastive loss and its bank (``None``: the term is off).
        on_gradients: called after the backward passes, before clipping (to inspect ``.grad``).
        no_sync: DDP's ``no_sync``: entered for every micro-batch but the last, so gradients are all-reduced once.
        autocast: the forward's autocast context (bf16 on CUDA), ``None`` for none.

    Raises:
        FloatingPointError: the loss is not finite (nothing is stepped).
    """
    if not micro_batches:
        raise ValueError("a step needs at least one micro-batch")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    optimizer.zero_grad(set_to_none=True)
    sums: dict[str, float] = {}
    outputs: TrainForward | None = None
    for index, batch in enumerate(micro_batches):
        last = index == len(micro_batches) - 1
        with (no_sync() if no_sync is not None and not last else contextlib.nullcontext()):
            with (autocast() if autocast is not None else contextlib.nullcontext()):
                outputs = model.forward_train_outputs(batch, contrastive, settings.weights, settings.ce_on,
                                                      settings.memory_grad, settings.memory_bank,
                                                      settings.image_grad, settings.prompt_grad,
                                                      settings.click_weight, settings.clicks_only,
                                                      seg_click_weight=settings.seg_click_weight)
            total = outputs.losses["total"]
            if not torch.isfinite(total):
                optimizer.zero_grad(set_to_none=True)
                raise FloatingPointError(f"the training loss is {float(total)}: not stepping")
            (total / len(micro_batches)).backward()
        for key, value in outputs.losses.items():
            sums[key] = sums.get(key, 0.0) + float(value.detach()) / len(micro_batches)
    if on_gradients is not None:
        on_gradients()
    with_grad = [p for p in params if p.grad is not None]
    if settings.grad_clip is not None:
        norm = float(torch.nn.utils.clip_grad_norm_(with_grad, settings.grad_clip))
    else:
        norm = float(torch.linalg.vector_norm(torch.stack([p.grad.detach().float().norm() for p in with_grad])))
    lr = float(optimizer.param_groups[0]["lr"])
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    assert outputs is not None
    return StepResult(losses=sums, grad_norm=norm, lr=lr, outputs=outputs)
