"""``glus train`` settings: one typed dataclass, read from YAML and ``key=value`` overrides, checked up front.

Defaults are the authors' GLUS-S recipe (spec section 5) except where a CPU run needs otherwise (``num_workers``).
The model starts either from a checkpoint (``model:``, released layout or glus format, tokenizer inside) or from
a preset with random weights (``preset: tiny`` + ``tokenizer:``, a folder with ``tokenizer.model``).

Ablations of the paper are switches: ``context_frames: 0`` (local only: no global context), ``query_frames: 1``
(global only: one query frame, no stream), ``memory_bank: false`` (every query frame decoded without memories),
``contrastive: false``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from glus.errors import GLUSError

__all__ = ["DATA_PRESETS", "DataSource", "TrainConfig", "load_train_config", "parse_data_source", "parse_overrides",
           "settings_from_mapping"]

#: Dataset mixes of the released models: (format name, sampling rate).
DATA_PRESETS: dict[str, tuple[tuple[str, float], ...]] = {
    "glus-s": (("mevis", 1.0), ("refytvos", 1.0)),
    "glus-a": (("mevis", 40.0), ("refytvos", 150.0), ("davis17", 4.0), ("revos", 30.0), ("lvvis", 30.0)),
}


@dataclass(frozen=True)
class DataSource:
    """One dataset of the training mix: its format, folder (as :func:`glus.data.formats.load_dataset` takes it),
    split and sampling rate (relative to the other sources')."""

    name: str
    path: str
    rate: float = 1.0
    split: str | None = None


def parse_data_source(text: str) -> DataSource:
    """``NAME=PATH[:RATE]`` (e.g. ``mevis=/data/mevis/train:40``) -> :class:`DataSource`; the split is the
    folder's (``train``)."""
    from glus.data.formats import DATASET_NAMES

    name, sep, rest = text.partition("=")
    if not sep or not rest:
        raise GLUSError(f"data source {text!r}: write NAME=PATH[:RATE], e.g. mevis=data/mevis/train:1")
    name = name.strip().lower()
    if name not in DATASET_NAMES:
        raise GLUSError(f"data source {text!r}: unknown dataset {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    path, rate = rest, 1.0
    head, colon, tail = rest.rpartition(":")
    if colon and head:
        try:
            path, rate = head, float(tail)
        except ValueError:
            path, rate = rest, 1.0  # a colon inside the path (Windows drive, URL-like): no rate given
    if not rate > 0:
        raise GLUSError(f"data source {text!r}: the rate must be > 0")
    return DataSource(name, path, rate)


@dataclass
class TrainConfig:
    """Everything a training run needs (see the module docstring). Paths are strings, as YAML holds them."""

    out: str = ""
    # model
    model: str | None = None
    preset: str | None = None
    tokenizer: str | None = None
    vision_tower: str | None = None
    sam2_config: str | None = None
    sam2_checkpoint: str | None = None  # Meta's SAM-2 weights: start as the authors do, model = a LISA checkpoint
    compat: str = "stored"
    sam2_image_size: int | None = None  # a smaller SAM-2 input than the model's (tiny CPU runs)
    mem_attn_dropout: float | None = None  # None: the model's (the authors': 0.1)
    # data
    data: list[str] = field(default_factory=list)  # NAME=PATH[:RATE] entries
    data_preset: str | None = None  # glus-s / glus-a: rates of DATA_PRESETS, folders from data_root
    data_root: str | None = None  # holds <name>/ folders for data_preset
    context_frames: int = 4
    query_frames: int = 4
    max_expressions: int = 3
    val_data: str | None = None  # NAME=PATH of a split with ground truth: J&F through glus's inference + evaluator
    val_every: int = 0  # steps between validations (0: only at the end, when val_data is set)
    val_videos: int | None = None  # validate on the first N videos only
    val_key_frame: str = "none"  # none / auto, as glus infer
    # optimisation
    steps: int = 3000
    warmup_steps: int = 100
    first_step_at_peak: bool = True  # DeepSpeed 0.15.1's first step at the peak lr (the authors' runs)
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    batch_size: int = 2  # samples per process and micro-batch
    grad_accumulation: int = 10
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    ce_weight: float = 1.0
    bce_weight: float = 2.0
    dice_weight: float = 0.5
    contrastive_weight: float = 0.1
    # Steps at the start with the mask terms (bce, dice) off. A language model trained from scratch (the small
    # preset) first has to learn from the contrastive loss to tell expressions apart: with the mask loss on from
    # step 0, every [SEG] collapses to one prompt that segments all objects, and stays there. 0: the authors' recipe.
    mask_loss_start: int = 0
    # Steps at the start in which the mask loss trains SAM-2 only (the [SEG] prompts are detached for the mask
    # terms): the decoder learns to use the prompts that the contrastive loss keeps apart before the mask loss may
    # pull them together. 0: the authors' recipe.
    prompt_grad_start: int = 0
    # SAM-2 trained from scratch (the small preset) first learns to follow a prompt from clicks, as Meta trains it
    # (glus.model.clicks): click_steps steps of SAM-2 alone on one click per target mask, then click_weight keeps a
    # click term beside the [SEG] mask loss so the decoder does not forget while the [SEG] prompts are still poor.
    # Both 0: the authors' recipe (their SAM-2 comes trained).
    click_steps: int = 0
    click_weight: float = 0.0
    # The [SEG] prompt of a one-object expression pulled (MSE) toward SAM-2's prompt of a click at the object's
    # centre (glus.model.clicks.center_clicks): a target for the language model in the decoder's own language, where
    # the mask loss reaches it only through a decoder that is itself still learning. 0: the authors' recipe.
    seg_click_weight: float = 0.0
    contrastive: bool = True
    contrastive_negatives_exclude_same_objects: bool = False  # the authors let same-object entries be negatives
    contrastive_update_bank_first: bool = True  # the authors push the batch into the bank before the loss
    reinit_seg_head: bool = True  # the authors re-initialise text_hidden_fcs after loading (quirk 1)
    memory_bank: bool = True
    ce_on: str = "seg"
    memory_grad: bool = False
    image_grad: bool = False  # SAM-2 image features with gradients (the authors: no_grad)
    extra_trainable: list[str] = field(default_factory=list)  # parameter-name parts trained beyond the recipe's
    gradient_checkpointing: bool = False
    # running
    device: str = "cpu"
    dtype: str = "fp32"  # bf16: autocast on CUDA, fp32 master weights
    seed: int = 0
    num_workers: int = 0
    save_every: int = 500
    keep_last: int = 3
    threads: int | None = None  # torch intra-op threads (None: torch's default)

    # ------------------------------------------------------------------ checks
    def validate(self) -> "TrainConfig":
        """One-line errors for settings that cannot work, before anything heavy happens."""
        if not self.out:
            raise GLUSError("out: give the run folder (checkpoints, logs and the final model go there)")
        if (self.model is None) == (self.preset is None):
            raise GLUSError("give exactly one of model (a checkpoint to start from) and preset (random weights)")
        if self.sam2_checkpoint is not None and self.model is None:
            raise GLUSError("sam2_checkpoint starts SAM-2 from Meta's weights and the LLM from model (a LISA "
                            "checkpoint): give model")
        if self.preset is not None and self.tokenizer is None:
            raise GLUSError("preset needs tokenizer: a folder with tokenizer.model and the [SEG] token")
        if self.compat not in ("official", "stored"):
            raise GLUSError(f"compat must be official or stored, got {self.compat!r}")
        if self.ce_on not in ("seg", "assistant"):
            raise GLUSError(f"ce_on must be seg or assistant, got {self.ce_on!r}")
        if self.dtype not in ("fp32", "bf16"):
            raise GLUSError(f"dtype must be fp32 or bf16, got {self.dtype!r}")
        if self.dtype == "bf16" and not str(self.device).startswith("cuda"):
            raise GLUSError("dtype bf16 trains with CUDA autocast: use device cuda, or dtype fp32 on the CPU")
        positive = {"steps": self.steps, "batch_size": self.batch_size, "grad_accumulation": self.grad_accumulation,
                    "query_frames": self.query_frames, "max_expressions": self.max_expressions,
                    "save_every": self.save_every, "keep_last": self.keep_last, "lora_r": self.lora_r}
        for key, value in positive.items():
            if value < 1:
                raise GLUSError(f"{key} must be >= 1, got {value}")
        if self.val_data is not None:
            parse_data_source(self.val_data)
        if self.val_key_frame not in ("none", "auto"):
            raise GLUSError(f"val_key_frame must be none or auto, got {self.val_key_frame!r}")
        if self.val_videos is not None and self.val_videos < 1:
            raise GLUSError(f"val_videos must be >= 1, got {self.val_videos}")
        for key in ("context_frames", "warmup_steps", "num_workers", "val_every"):
            if getattr(self, key) < 0:
                raise GLUSError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not self.lr > 0:
            raise GLUSError(f"lr must be > 0, got {self.lr}")
        for key in ("mask_loss_start", "prompt_grad_start", "click_steps"):
            if getattr(self, key) < 0:
                raise GLUSError(f"{key} must be >= 0, got {getattr(self, key)}")
        if self.click_steps >= self.steps:
            raise GLUSError(f"click_steps ({self.click_steps}) must be fewer than steps ({self.steps}): the [SEG] "
                            "stage needs steps of its own")
        for key in ("click_weight", "seg_click_weight"):
            if getattr(self, key) < 0:
                raise GLUSError(f"{key} must be >= 0, got {getattr(self, key)}")
        if not 0 <= self.lora_dropout < 1:
            raise GLUSError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.data_preset is not None:
            if self.data_preset not in DATA_PRESETS:
                raise GLUSError(f"data_preset must be one of {', '.join(DATA_PRESETS)}, got {self.data_preset!r}")
            if self.data_root is None:
                raise GLUSError("data_preset needs data_root: the folder holding mevis/, refytvos/, ...")
        if not self.sources():
            raise GLUSError("no training data: give data (NAME=PATH[:RATE]) or data_preset with data_root")
        return self

    def sources(self) -> list[DataSource]:
        """The training mix: ``data`` entries, then the preset's datasets under ``data_root``."""
        out = [parse_data_source(text) for text in self.data]
        if self.data_preset is not None and self.data_root is not None:
            out += [DataSource(name, str(Path(self.data_root) / name), rate, "train")
                    for name, rate in DATA_PRESETS[self.data_preset]]
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any], where: str | Path = "config") -> "TrainConfig":
        """Build from a mapping (YAML), refusing unknown keys and values of the wrong type by name."""
        return settings_from_mapping(cls, raw, where)


def settings_from_mapping(cls: type, raw: Mapping[str, Any], where: str | Path = "config") -> Any:
    """A settings dataclass (every field with a default) from a mapping, refusing unknown keys and values of the
    wrong type by name."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise GLUSError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(known)}", where)
    defaults = cls()
    return cls(**{key: _coerce(key, value, getattr(defaults, key), where) for key, value in raw.items()})


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> ``{key: value}``, the values parsed as YAML; one-line errors for what is not."""
    raw: dict[str, Any] = {}
    for text in overrides:
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise GLUSError(f"override {text!r}: write key=value")
        try:
            raw[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise GLUSError(f"override {text!r}: the value is not valid YAML") from None
    return raw


def _coerce(key: str, value: Any, default: Any, where: str | Path) -> Any:
    """``value`` in the type of the setting's default (YAML gives ints for floats, lists for tuples)."""
    if value is None:
        return None
    try:
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise TypeError
            return value
        if isinstance(default, tuple):
            return tuple(type(default[0])(v) for v in value) if default else tuple(value)
        if isinstance(default, list):
            if isinstance(value, str):
                return [value]
            return [str(v) for v in value]
        if isinstance(default, (int, float)) and not isinstance(value, bool):
            converted = type(default)(value)
            if isinstance(default, int) and converted != value:
                raise TypeError
            return converted
        if default is None or isinstance(default, str):
            return value if isinstance(value, (int, float)) and key in _NUMERIC_OPTIONAL else str(value)
    except (TypeError, ValueError):
        pass
    raise GLUSError(f"{key}: {value!r} is not a valid value (expected like {default!r})", where)


_NUMERIC_OPTIONAL = {"sam2_image_size", "mem_attn_dropout", "grad_clip", "threads", "val_videos"}


def load_train_config(path: str | Path | None, overrides: Sequence[str] = (),
                      extra_data: Sequence[str] = ()) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML file (optional), ``key=value`` overrides (values parsed as YAML) and
    further ``NAME=PATH[:RATE]`` data sources (``--data``)."""
    raw: dict[str, Any] = {}
    where: str | Path = "overrides"
    if path is not None:
        where = Path(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise GLUSError("training config not found", path) from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise GLUSError(f"not a readable YAML file ({str(exc).splitlines()[0]})", path) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise GLUSError("a training config is a mapping of settings", path)
        raw.update(loaded or {})
    raw.update(parse_overrides(overrides))
    config = TrainConfig.from_mapping(raw, where)
    config.data = [*config.data, *extra_data]
    return config.validate()
