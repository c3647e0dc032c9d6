"""Click prompts sampled from ground-truth masks: SAM-2's own training signal, for a SAM-2 trained from scratch.

A mask decoder trained from random weights with ``[SEG]`` prompts alone never learns to read its prompt: one mask
over every object is an easy minimum that an uninformative prompt cannot pull it out of (the small preset sat
there for thousands of steps). Meta trains SAM-2 on clicks; a click says which object is meant in the plainest
way there is, and with it the decoder learns to follow a prompt within about a thousand steps on the synthetic
benchmark. ``glus train``'s ``click_steps`` and ``click_weight`` use these clicks.
"""

from __future__ import annotations

import torch

__all__ = ["sample_clicks"]


def sample_clicks(masks: torch.Tensor, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per mask, uniformly on its foreground, in SAM-2's input pixels.

    Args:
        masks: ``[N, H, W]`` binary masks at the frame's original size.
        image_size: SAM-2's square input size ``S`` (frames are resized to ``S x S``, so a click scales per axis).

    Returns:
        ``(points [N, 2] (x, y) float, present [N] bool)``: an empty mask gets no click (``present`` False, its
        point is 0, 0). The clicks come from torch's global generator, which a resumed run restores.
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must be [N, H, W], got {tuple(masks.shape)}")
    n, h, w = masks.shape
    flat = masks.reshape(n, -1) > 0
    present = flat.any(dim=1)
    # A uniform pick among the foreground pixels: the largest of (random key where foreground, -1 elsewhere).
    keys = torch.rand(flat.shape, device=masks.device)
    index = torch.where(flat, keys, torch.full_like(keys, -1.0)).argmax(dim=1)
    ys, xs = (index // w).float(), (index % w).float()
    points = torch.stack([xs * image_size / w, ys * image_size / h], dim=1)
    return torch.where(present[:, None], points, torch.zeros_like(points)), present
