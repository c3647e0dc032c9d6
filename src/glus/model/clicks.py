"""Click prompts sampled from ground-truth masks: SAM-2's own training signal, for a SAM-2 trained from scratch.

A mask decoder trained from random weights with ``[SEG]`` prompts alone never learns to read its prompt: one mask
over every object is an easy minimum that an uninformative prompt cannot pull it out of (the small preset sat
there for thousands of steps). Meta trains SAM-2 on clicks; a click says which object is meant in the plainest
way there is, and with it the decoder learns to follow a prompt within about a thousand steps on the synthetic
benchmark. ``glus train``'s ``click_steps`` and ``click_weight`` use these clicks.

:func:`center_clicks` gives the one click that best says "this object" (the foreground pixel farthest from the
background); ``glus train``'s ``seg_click_weight`` pulls each ``[SEG]`` prompt toward SAM-2's own prompt of that
click, so the language model learns to say *where* the referred object is in the form the decoder already reads.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

__all__ = ["center_clicks", "sample_clicks"]


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


def center_clicks(masks: torch.Tensor, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One click per mask at its most interior pixel, in SAM-2's input pixels.

    The most interior pixel is the foreground pixel farthest from any background pixel, the frame's border
    counting as background; of a ridge of such pixels (a rectangle's middle line), the one nearest the ridge's
    mean. It is the centre of a convex shape, and still inside a shape cut by occlusion or by the frame's edge,
    where its centroid may not be.

    Args:
        masks: ``[N, H, W]`` binary masks at the frame's original size.
        image_size: SAM-2's square input size ``S``.

    Returns:
        ``(points [N, 2] (x, y) float, present [N] bool)`` as :func:`sample_clicks` (deterministic).
    """
    if masks.dim() != 3:
        raise ValueError(f"masks must be [N, H, W], got {tuple(masks.shape)}")
    n, h, w = masks.shape
    foreground = (masks > 0).cpu().numpy()
    points = np.zeros((n, 2), dtype=np.float32)
    present = foreground.reshape(n, -1).any(axis=1)
    for i in np.flatnonzero(present):
        distance = distance_transform_edt(np.pad(foreground[i], 1))[1:-1, 1:-1]
        ys, xs = np.nonzero(distance >= distance.max() - 0.5)
        pick = int(np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2))
        points[i] = (xs[pick] * image_size / w, ys[pick] * image_size / h)
    return (torch.from_numpy(points).to(masks.device), torch.from_numpy(present).to(masks.device))
