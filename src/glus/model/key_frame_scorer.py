"""The trained key-frame scorer: how well each first-pass mask fits, predicted from the GLUS model's own outputs.

Self-refinement (spec section 4.4) runs a first forward pass, picks the most reliable frame and propagates from
it. The authors score frames with a second 7B model that emits a ``[SCORE]`` token per frame and regresses the IoU
of a checkpoint's predictions; glus instead puts a small head on what the first pass already computed, so scoring
costs nothing beyond the pass itself and the scorer ships with (and fits) the checkpoint it scores:

* the ``[SEG]`` prompt of the frame (``[prompt_dim]``, the seg head's output that SAM-2 decodes): what the LLM
  concluded about this frame of this expression, with the global context frames in view;
* SAM-2's predicted IoU and object-score logit (the two terms of the untrained heuristic,
  :func:`glus.inference.keyframes.frame_quality`);
* the mask's area, as a fraction of the frame and relative to the expression's mean area over the pass: a frame
  whose mask is far smaller or larger than on the others is often a partial or a wrong object.

Inputs are standardised with statistics stored in the head (fitted on its training labels); the output is a
predicted IoU in ``[0, 1]``. A frame without ``[SEG]`` scores 0, as in the heuristic: it has no mask to
propagate from.

Files: ``key_frame_scorer.safetensors`` (weights and input statistics) and ``key_frame_scorer.json`` (sizes and a
record of how it was trained), in the checkpoint folder or a folder of their own. :func:`load_key_frame_scorer`
reads them; released checkpoints have none, and then ``--key-frame auto`` falls back to the heuristic.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from glus.errors import GLUSError
from glus.fileio import atomic_path, atomic_write_json, read_json_object

WEIGHTS_NAME = "key_frame_scorer.safetensors"
CONFIG_NAME = "key_frame_scorer.json"
FORMAT = "glus-key-frame-scorer"
#: The scalar inputs beside the ``[SEG]`` prompt, in order (see :func:`scorer_inputs`).
SCALAR_FEATURES = ("iou_prediction", "object_probability", "object_logit", "area", "relative_area")


class FrameSummary(NamedTuple):
    """What the scorer reads of one frame's prediction (a :class:`~glus.inference.results.FramePrediction` without
    its mask, small enough to keep for a whole pass)."""

    seg_generated: bool
    iou: float
    object_score: float
    embedding: np.ndarray | None
    area: float

    @classmethod
    def of(cls, prediction: Any) -> "FrameSummary":
        return cls(bool(prediction.seg_generated), float(prediction.iou), float(prediction.object_score),
                   prediction.embedding, float(prediction.area))


@dataclass
class FirstPassRecord:
    """What a first forward pass said about each frame of one expression (the scorer's input, also stored by
    ``glus infer --save-frame-features`` so that a scorer trains without running the model again).

    Attributes:
        embedding: ``[T, D]`` float32 the ``[SEG]`` prompt per frame (zeros where no ``[SEG]``).
        iou: ``[T]`` SAM-2's predicted IoU (0 where no ``[SEG]``).
        object_score: ``[T]`` SAM-2's object-score logit (``-inf`` where no ``[SEG]``).
        seg_generated: ``[T]`` bool whether the frame's turn said ``[SEG]``.
        area: ``[T]`` the fraction of the frame the mask covers.
    """

    embedding: np.ndarray
    iou: np.ndarray
    object_score: np.ndarray
    seg_generated: np.ndarray
    area: np.ndarray

    @classmethod
    def from_predictions(cls, predictions: Sequence[Any], embedding_dim: int) -> "FirstPassRecord":
        """From the pass's :class:`~glus.inference.results.FramePrediction` (or :class:`FrameSummary`) objects, in
        frame order."""
        emb = np.zeros((len(predictions), embedding_dim), dtype=np.float32)
        for t, p in enumerate(predictions):
            if p.seg_generated and p.embedding is not None:
                emb[t] = p.embedding
        return cls(emb, np.array([p.iou for p in predictions], dtype=np.float32),
                   np.array([p.object_score for p in predictions], dtype=np.float32),
                   np.array([p.seg_generated for p in predictions], dtype=bool),
                   np.array([p.area for p in predictions], dtype=np.float32))

    def __len__(self) -> int:
        return int(self.iou.shape[0])

    def save(self, path: str | Path) -> None:
        """Write the record as an ``.npz`` file atomically."""
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **dataclasses.asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> "FirstPassRecord":
        """Read a record written by :meth:`save`; one-line error if it is not one."""
        names = [f.name for f in dataclasses.fields(cls)]
        try:
            with np.load(path) as data:
                arrays = {n: data[n] for n in names}
        except FileNotFoundError:
            raise GLUSError("frame-feature file not found", path) from None
        except (OSError, ValueError, KeyError) as exc:
            raise GLUSError(f"not a frame-feature file ({str(exc).splitlines()[0]})", path) from None
        record = cls(**arrays)
        sizes = {n: a.shape[0] for n, a in arrays.items()}
        if len(set(sizes.values())) != 1 or arrays["embedding"].ndim != 2:
            raise GLUSError(f"frame-feature file has inconsistent frame counts {sizes}", path)
        return record


def scorer_inputs(record: FirstPassRecord) -> np.ndarray:
    """The scorer's raw inputs ``[T, D + 5]``: the ``[SEG]`` prompt, then :data:`SCALAR_FEATURES`."""
    logit = np.clip(np.nan_to_num(record.object_score, neginf=-30.0, posinf=30.0), -30.0, 30.0)
    seg = record.seg_generated
    mean_area = float(record.area[seg].mean()) if seg.any() else 0.0
    relative = record.area / mean_area if mean_area > 0 else np.zeros_like(record.area)
    scalars = np.stack([record.iou, 1.0 / (1.0 + np.exp(-logit)), logit, record.area, relative], axis=1)
    return np.concatenate([record.embedding, scalars.astype(np.float32)], axis=1).astype(np.float32)


@dataclass
class KeyFrameScorerConfig:
    """Sizes of the head and a record of its training (``training``: free-form, written to the JSON)."""

    embedding_dim: int
    hidden_size: int = 64
    num_layers: int = 2
    training: dict[str, Any] = field(default_factory=dict)

    @property
    def input_dim(self) -> int:
        return self.embedding_dim + len(SCALAR_FEATURES)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "KeyFrameScorerConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


class KeyFrameScorer(nn.Module):
    """An MLP from :func:`scorer_inputs` to a predicted IoU in ``[0, 1]`` (see the module docstring).

    Buffers ``input_mean`` / ``input_std`` ``[input_dim]`` standardise the inputs (:meth:`fit_normalisation`).
    """

    def __init__(self, config: KeyFrameScorerConfig) -> None:
        super().__init__()
        self.config = config
        layers: list[nn.Module] = []
        width = config.input_dim
        for _ in range(config.num_layers):
            layers += [nn.Linear(width, config.hidden_size), nn.GELU()]
            width = config.hidden_size
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)
        self.register_buffer("input_mean", torch.zeros(config.input_dim))
        self.register_buffer("input_std", torch.ones(config.input_dim))

    def fit_normalisation(self, inputs: torch.Tensor) -> None:
        """Set the input statistics from training inputs ``[N, input_dim]`` (constant columns keep std 1)."""
        std = inputs.std(dim=0)
        self.input_mean.copy_(inputs.mean(dim=0))
        self.input_std.copy_(torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """``[N, input_dim]`` raw inputs -> ``[N]`` predicted IoU in ``[0, 1]``."""
        x = (inputs - self.input_mean) / self.input_std
        return torch.sigmoid(self.mlp(x).squeeze(-1))

    @torch.no_grad()
    def score(self, record: FirstPassRecord) -> np.ndarray:
        """``[T]`` frame scores of one first pass: the predicted IoU, 0 where the frame has no ``[SEG]``."""
        if record.embedding.shape[1] != self.config.embedding_dim:
            raise GLUSError(f"the key-frame scorer takes [SEG] prompts of width {self.config.embedding_dim}, the "
                            f"model makes {record.embedding.shape[1]}: it was trained for another model")
        param = self.input_mean
        pred = self(torch.from_numpy(scorer_inputs(record)).to(param.device, param.dtype)).float().cpu().numpy()
        return np.where(record.seg_generated, pred, 0.0).astype(np.float64)

    def save_pretrained(self, folder: str | Path) -> None:
        """Write :data:`WEIGHTS_NAME` and :data:`CONFIG_NAME` into ``folder`` (created), each atomically."""
        from glus.model.checkpoint_io import save_safetensors_atomic

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_safetensors_atomic({k: v.float().cpu() for k, v in self.state_dict().items()}, folder / WEIGHTS_NAME)
        atomic_write_json(folder / CONFIG_NAME, self.config.to_dict(), indent=2)


def has_key_frame_scorer(folder: str | Path) -> bool:
    """Whether ``folder`` holds a key-frame scorer (its weights file)."""
    return (Path(folder) / WEIGHTS_NAME).is_file()


#: The ``key_frame_scorer`` choices that name no folder: the checkpoint's own scorer where it has one (``auto``), it
#: or an error (``trained``), or the heuristic whatever the checkpoint holds (``heuristic``).
SCORER_CHOICES = ("auto", "trained", "heuristic")


def check_scorer_choice(choice: str | Path | None) -> None:
    """One-line error for a ``key_frame_scorer`` setting that is neither a choice nor an existing path."""
    if choice is None or str(choice) in SCORER_CHOICES:
        return
    if not Path(choice).expanduser().exists():
        from glus.errors import ParameterError

        raise ParameterError(f"{{key_frame_scorer}} must be one of {', '.join(SCORER_CHOICES)} or a scorer "
                             f"folder, got {str(choice)!r} (no such file or folder)")


def key_frame_scorer_for(checkpoint: str | Path | None, choice: str | Path | None = "auto",
                         device: str | torch.device = "cpu") -> KeyFrameScorer | None:
    """The scorer a run uses: ``choice`` is one of :data:`SCORER_CHOICES` or a folder holding a scorer (a
    scorer trained for a checkpoint whose folder may not be written, such as a hub download); ``checkpoint`` is the
    model's local folder. ``None`` means the heuristic.
    """
    check_scorer_choice(choice)
    if choice is None or str(choice) == "heuristic":
        return None
    if str(choice) in ("auto", "trained"):
        if checkpoint is not None and has_key_frame_scorer(checkpoint):
            return load_key_frame_scorer(checkpoint, device)
        if str(choice) == "trained":
            raise GLUSError("the checkpoint has no trained key-frame scorer (train one with glus train scorer)",
                            checkpoint)
        return None
    return load_key_frame_scorer(Path(choice).expanduser(), device)


def load_key_frame_scorer(folder: str | Path, device: str | torch.device = "cpu") -> KeyFrameScorer:
    """Read a scorer written by :meth:`KeyFrameScorer.save_pretrained`; one-line errors for what does not fit."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if folder.is_file():  # the weights file itself
        folder = folder.parent
    raw = read_json_object(folder / CONFIG_NAME, "key-frame scorer config")
    if raw.get("format") != FORMAT:
        raise GLUSError(f"not a glus key-frame scorer config (format {raw.get('format')!r})", folder / CONFIG_NAME)
    try:
        config = KeyFrameScorerConfig.from_dict(raw)
        scorer = KeyFrameScorer(config)
    except (TypeError, ValueError) as exc:
        raise GLUSError(f"malformed key-frame scorer config ({exc})", folder / CONFIG_NAME) from None
    path = folder / WEIGHTS_NAME
    try:
        state = load_file(str(path))
    except FileNotFoundError:
        raise GLUSError("key-frame scorer weights not found", path) from None
    except Exception as exc:
        raise GLUSError(f"cannot read the key-frame scorer weights ({str(exc).splitlines()[0]})", path) from None
    expected = scorer.state_dict()
    wrong = sorted(set(expected) ^ set(state)) + sorted(k for k in set(expected) & set(state)
                                                         if expected[k].shape != state[k].shape)
    if wrong:
        raise GLUSError(f"key-frame scorer weights do not match its config ({', '.join(wrong[:4])})", path)
    scorer.load_state_dict(state)
    return scorer.to(device).eval()


__all__ = ["CONFIG_NAME", "FirstPassRecord", "FrameSummary", "KeyFrameScorer", "KeyFrameScorerConfig", "SCALAR_FEATURES",
           "SCORER_CHOICES", "WEIGHTS_NAME", "check_scorer_choice", "has_key_frame_scorer", "key_frame_scorer_for",
           "load_key_frame_scorer", "scorer_inputs"]
