"""``glus train check-official``: glus's training step against the authors' recorded one.

A reference folder (``official_tiny/``: a tiny checkpoint in the released layout, its ``frames/``, ``reference.json``)
holds in ``train_step/`` what the authors' ``train_ds.py`` did in its first optimizer step under real DeepSpeed:
the batch (token ids, labels, frame indices, ground-truth RLEs), the weights that are not in the checkpoint (the
re-initialised ``text_hidden_fcs``, the LoRA matrices), and per *record* (variants of the same step) the loss
terms, ``[SEG]`` embeddings, mask logits, per-parameter gradient norms and update norms. Its README is the
schema; this module reads everything from the record, nothing from the authors' code.

For each record the check rebuilds that model and batch in glus, runs :func:`glus.train.step.train_step` (the step
``glus train`` runs) and compares. Deviations are relative: ``|ours - theirs| / max(|theirs|, floor)`` for scalars
(the floor keeps values that are 0 up to float noise, such as the rigged CE, from dividing by ~0) and
``max |ours - theirs| / max |theirs|`` for tensors. A record with dropout on (``lora_dropout > 0`` or the yaml's
memory-attention dropout kept) is not reproducible by another implementation and is reported as skipped.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from glus.data.masks import decode_rle
from glus.errors import GLUSError
from glus.fileio import read_json_object
from glus.data.training import TrainingSample
from glus.data.video import read_image_rgb
from glus.model.glus import GLUSModel
from glus.model.losses import ContrastiveConfig, GLUSLossWeights, ObjectContrastiveLoss, SegEntryMeta, object_set_key
from glus.model.adapters import apply_lora
from glus.model.sam2_model import preprocess_frame
from glus.model.vision_tower import clip_pixel_values
from glus.train.schedule import WarmupDecay, warmup_decay_scheduler
from glus.train.step import StepSettings, adamw, released_parameter_names, train_step

logger = logging.getLogger(__name__)

__all__ = ["TOLERANCES", "RecordCheck", "OfficialTrainStep", "check_official"]

#: Pass limits of each deviation (the reference README's tolerances: losses 1e-5, gradient and update norms 1e-3
#: relative; embeddings and logits agree to float rounding through several attention layers and a 1024^2 resize).
TOLERANCES: dict[str, float] = {
    "losses": 1e-5, "seg_embeddings": 1e-4, "mask_logits": 1e-4, "grad_norms": 1e-3, "update_norms": 1e-3,
}
# Floors of the scalar deviations' denominators: below them a value counts as 0 (float noise of a 0 result).
_LOSS_FLOOR = 1e-6
_NORM_FLOOR = 1e-9
# A tensor whose gradient norm is below this fraction of the global gradient norm has a gradient that is 0 in exact
# arithmetic and float noise in fp32 (SAM-2's attention key biases: softmax ignores a shift of every key). Its norm
# is compared against that floor instead of against itself, and its update (Adam turns noise into lr-sized steps
# in random directions) is not compared; the zero / no-gradient sets still check it exactly.
_GRAD_NOISE_FRACTION = 1e-4
# The recorded loss names -> glus's weighted terms.
_LOSS_NAMES = {"loss": ("total",), "ce_loss": ("ce",), "mask_bce_loss": ("bce",), "mask_dice_loss": ("dice",),
               "mask_loss": ("bce", "dice"), "contrastive_loss": ("contrastive",)}


@dataclass
class RecordCheck:
    """The outcome of one record.

    Attributes:
        name: the record's name.
        deviations: worst relative deviation per quantity (see :data:`TOLERANCES`); also the inputs' sums.
        sets: whether the trainable set, the no-gradient set and the zero-gradient set match by name.
        worst: per quantity, the name of the worst entry (a loss term, parameter, sample).
        skipped: why the record was not compared (``None`` when it was).
        notes: mismatching names and other details.
    """

    name: str
    deviations: dict[str, float] = field(default_factory=dict)
    sets: dict[str, bool] = field(default_factory=dict)
    worst: dict[str, str] = field(default_factory=dict)
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        if self.skipped is not None:
            return True
        within = all(self.deviations.get(k, math.inf) <= tol for k, tol in TOLERANCES.items())
        return within and all(self.sets.values())

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "passed": self.passed}


def _scalar_deviation(ours: float, theirs: float, floor: float) -> float:
    return abs(ours - theirs) / max(abs(theirs), floor)


def _tensor_deviation(ours: torch.Tensor | np.ndarray, theirs: np.ndarray) -> float:
    a = np.asarray(ours.detach().cpu().double() if isinstance(ours, torch.Tensor) else ours, dtype=np.float64)
    b = np.asarray(theirs, dtype=np.float64)
    if a.shape != b.shape:
        return math.inf
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


def _worst(values: Mapping[str, float]) -> tuple[float, str]:
    if not values:
        return math.inf, "nothing compared"
    name = max(values, key=lambda k: values[k])
    return values[name], name


class OfficialTrainStep:
    """The recorded training step of a reference folder (``DIR/train_step/train_step.{json,npz}``).

    Args:
        folder: the reference folder (holds the checkpoint, ``frames/``, ``reference.json`` and ``train_step/``).
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        step_dir = self.folder / "train_step"
        if not (step_dir / "train_step.json").is_file():
            raise GLUSError("no train_step/train_step.json: not a reference folder with a recorded training step",
                            self.folder)
        self.record = read_json_object(step_dir / "train_step.json", "training-step record")
        npz = step_dir / "train_step.npz"
        if not npz.is_file():
            raise GLUSError("train_step.npz is missing beside train_step.json", npz)
        try:
            with np.load(npz) as arrays:
                self.arrays = {k: arrays[k] for k in arrays.files}
        except (OSError, ValueError) as exc:
            raise GLUSError(f"not a readable npz archive ({exc})", npz) from None
        try:
            self.batch = self.record["batch"]
            self.records: dict[str, dict] = self.record["records"]
            self.dataset = self.record["dataset"]
        except KeyError as exc:
            raise GLUSError(f"the record has no {exc.args[0]!r} entry", step_dir / "train_step.json") from None

    # ------------------------------------------------------------------ record contents
    def array(self, record: str, key: str) -> np.ndarray:
        """``<record>/<key>`` of the npz, or step0's where the record lists it as identical."""
        own = f"{record}/{key}"
        if own in self.arrays:
            return self.arrays[own]
        if key in self.records[record].get("arrays_identical_to_step0", []) and f"step0/{key}" in self.arrays:
            return self.arrays[f"step0/{key}"]
        raise GLUSError(f"train_step.npz has no array {own!r}", self.folder / "train_step")

    def skip_reason(self, name: str) -> str | None:
        rec = self.records[name]
        if float(rec.get("lora_dropout", 0.0)) > 0 or rec.get("sam_config_yaml", "nodrop") != "nodrop":
            return "dropout on: its random masks cannot be reproduced by another implementation"
        return None

    # ------------------------------------------------------------------ model
    def build_model(self, name: str) -> GLUSModel:
        """The record's starting model: the checkpoint (fuser gamma as stored, memory-attention dropout off),
        LoRA with the recorded initial matrices, the re-initialised ``text_hidden_fcs``, the trainable set."""
        from glus.model.checkpoint import from_pretrained, sam2_config_from_arg

        rec = self.records[name]
        yaml = self.folder / "sam2_tiny.yaml"
        if not yaml.is_file():
            candidates = sorted(self.folder.glob("*.yaml"))
            if len(candidates) != 1:
                raise GLUSError("need exactly one SAM-2 yaml in the reference folder", self.folder)
            yaml = candidates[0]
        sam2 = dataclasses.replace(sam2_config_from_arg(yaml), mem_attn_dropout=0.0)  # as the parity run did
        model = from_pretrained(self.folder, vision_tower=self.folder / "clip", sam2_config=sam2, compat="stored")
        if rec.get("weights", "checkpoint") == "unrigged_seg_row":
            self._unrig(model)
        lora = rec["lora_config"]
        leaves = sorted({t.rsplit(".", 1)[-1] for t in lora["target_modules"]})
        peft_model = apply_lora(model, r=int(lora["r"]), alpha=int(lora["lora_alpha"]),
                                dropout=float(lora["lora_dropout"]), target_modules=leaves)
        params = released_parameter_names(peft_model)
        prefix = f"{name}/init/"
        inits = {k[len(prefix):] for k in self.arrays if k.startswith(prefix)}
        inits |= {k[len("init/"):] for k in rec.get("arrays_identical_to_step0", []) if k.startswith("init/")}
        with torch.no_grad():
            for key in sorted(inits):
                if key not in params:
                    raise GLUSError(f"the record initialises {key!r}, which glus's model does not have",
                                    self.folder / "train_step")
                value = torch.from_numpy(self.array(name, f"init/{key}"))
                if tuple(value.shape) != tuple(params[key].shape):
                    raise GLUSError(f"{key}: recorded init {tuple(value.shape)}, model {tuple(params[key].shape)}",
                                    self.folder / "train_step")
                params[key].copy_(value)
        peft_model.train()
        return peft_model

    def _unrig(self, model: GLUSModel) -> None:
        spec = self.record.get("unrigged_seg_row_weights") or {}
        reference = read_json_object(self.folder / "reference.json", "reference record")
        try:
            row = torch.tensor(reference["rigging"]["unrigged_row"], dtype=torch.float32)
            index = int(spec.get("row", reference["rigging"]["row"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise GLUSError(f"no usable rigging.unrigged_row ({exc!r})", self.folder / "reference.json") from None
        with torch.no_grad():
            model.lm_head.weight[index].copy_(row.to(model.lm_head.weight.dtype))

    # ------------------------------------------------------------------ batch
    def _frames(self) -> list[np.ndarray]:
        return [read_image_rgb(self.folder / "frames" / f"{frame}.png") for frame in self.dataset["frames"]]

    def _objects(self) -> dict[tuple[str, str], list]:
        videos = self.dataset["meta_expressions_json"]["videos"]
        return {(video, exp): meta["obj_id"] for video, v in videos.items() for exp, meta in v["expressions"].items()}

    def build_batch(self, model: GLUSModel) -> tuple[list[TrainingSample], dict[str, float]]:
        """The recorded batch as glus's training samples, and the deviation of the recomputed input sums."""
        b = self.batch
        frames = self._frames()
        objects = self._objects()
        image_size = model.sam2.config.image_size
        samples, sums = [], {}
        for i, indices in enumerate(b["frame_indices"]):
            n_query = int(b["question_frame_num"])
            chosen = [frames[t] for t in indices]
            clip = clip_pixel_values(chosen, model.clip_processor)
            sam_all = torch.stack([preprocess_frame(f, image_size) for f in chosen])
            sums[f"images_sum/sample{i}"] = _scalar_deviation(float(sam_all.double().sum()), b["images_sum"][i], 1.0)
            sums[f"images_clip_sum/sample{i}"] = _scalar_deviation(float(clip.double().sum()),
                                                                   b["images_clip_sum"][i], 1.0)
            rows = range(b["offset"][i], b["offset"][i + 1])
            ids, labels = [], []
            for r in rows:
                keep = torch.tensor(b["attention_masks"][r], dtype=torch.bool)
                ids.append(torch.tensor(b["input_ids"][r], dtype=torch.long)[keep])
                labels.append(torch.tensor(b["labels"][r], dtype=torch.long)[keep])
            rles = b["gt_masks"][i]["rle"]
            masks = torch.from_numpy(np.stack([np.stack([decode_rle(rle) for rle in per_exp]) for per_exp in rles]))
            str_ids = b["sampled_str_ids_list"][i]
            video = self.dataset["video"]
            exp_ids = [s.rsplit("_", 1)[1] for s in str_ids]
            samples.append(TrainingSample(
                clip_pixels=clip, sam_pixels=sam_all[-n_query:], input_ids=ids, labels=labels, masks=masks.float(),
                video=video, expressions=exp_ids, objects=[objects[(video, e)] for e in exp_ids],
                frames=list(b["sampled_frames_list"][i]), dataset=str_ids[0].split("_", 1)[0]))
        return samples, sums

    def contrastive(self, name: str, embed_dim: int) -> ObjectContrastiveLoss | None:
        """The record's contrastive loss: its bank as it stood before the step, its recorded draws replayed."""
        rec = self.records[name]
        if "--use_contrastive_loss" not in rec.get("argv", []):
            return None
        info = rec.get("contrastive") or self.records["step0"].get("contrastive") or {}
        loss = ObjectContrastiveLoss(ContrastiveConfig(bank_size=int(info.get("bank_at_loss", {}).get(
            "max_bank_size", 512))))
        calls = info.get("get_loss_calls", [])
        updates = int(info.get("updates", len(calls)))
        entries = info.get("bank_at_loss", {}).get("entries", [])
        if len(entries) > updates:  # a prefilled bank: everything before the step's own embeddings
            tokens = torch.from_numpy(self.array(name, "contrastive/bank_at_loss_tokens"))[:len(entries) - updates]
            objects = self._objects()
            metas = [SegEntryMeta(video, exp, object_set_key(objects[(video, exp)]), frame, dataset)
                     for dataset, video, exp, frame in entries[:len(entries) - updates]]
            loss.bank.push(tokens.reshape(-1, embed_dim), metas)

        def replay(row: int, positives: list[int], negatives: list[int]) -> tuple[int, Sequence[int]]:
            call = calls[row]
            if not call.get("active"):
                raise GLUSError(f"anchor {row} contributes in glus but not in the record "
                                f"({len(positives)} positives, {len(negatives)} negatives here, "
                                f"{call.get('n_positives')} / {call.get('n_negatives')} recorded)")
            return int(call["positive_bank_index"]), [int(i) for i in call["negative_bank_indices"]]

        loss.sampler = replay
        return loss

    # ------------------------------------------------------------------ the check
    def check(self, name: str) -> RecordCheck:
        """Run glus's step on record ``name`` and compare (see the module docstring)."""
        if name not in self.records:
            raise GLUSError(f"no record {name!r}; the folder has {', '.join(self.records)}",
                            self.folder / "train_step")
        out = RecordCheck(name)
        out.skipped = self.skip_reason(name)
        if out.skipped:
            return out
        rec = self.records[name]
        torch.manual_seed(int(self.record.get("seed", 0)))
        model = self.build_model(name)
        base = model.get_base_model()
        params = released_parameter_names(model)
        trainable = {k for k, p in params.items() if p.requires_grad}
        recorded_trainable = {p["name"] for p in self.record["trainable_parameters"]}
        out.sets["trainable"] = trainable == recorded_trainable
        if not out.sets["trainable"]:
            out.notes.append(f"trainable only in glus: {sorted(trainable - recorded_trainable)[:5]}; only in the "
                             f"record: {sorted(recorded_trainable - trainable)[:5]}")
        samples, input_sums = self.build_batch(base)
        out.deviations["inputs"], out.worst["inputs"] = _worst(input_sums)

        ds = rec["deepspeed"]
        opt = ds["basic_optimizer_defaults"]
        ordered = [params[k] for k in sorted(trainable)]
        optimizer = adamw(ordered, lr=float(opt["lr"]), betas=tuple(opt["betas"]), eps=float(opt["eps"]),
                          weight_decay=float(opt["weight_decay"]))
        scheduler = warmup_decay_scheduler(optimizer, self.schedule())
        before = {k: params[k].detach().clone() for k in trainable}
        weights = GLUSLossWeights(**{k: float(v) for k, v in rec["loss_weights"].items()})
        settings = StepSettings(weights=weights, grad_clip=float(ds["gradient_clipping"]))
        grads: dict[str, torch.Tensor | None] = {}

        def keep_gradients() -> None:
            for k in trainable:
                grad = params[k].grad
                grads[k] = None if grad is None else grad.detach().clone()

        contrastive = self.contrastive(name, base.config.prompt_dim)
        result = train_step(model, [samples], optimizer, scheduler, contrastive=contrastive, settings=settings,
                            on_gradients=keep_gradients)
        step = rec["optimizer_step"]
        lrs = (result.lr, float(optimizer.param_groups[0]["lr"]))
        out.sets["lr_schedule"] = lrs == (float(step["lr_used"][0]), float(step["lr_after_step"][0]))
        if not out.sets["lr_schedule"]:
            out.notes.append(f"lr of step 1 / after it: {lrs} in glus, {step['lr_used'][0]} / "
                             f"{step['lr_after_step'][0]} in the record")
        self._compare_losses(out, rec, result.outputs)
        self._compare_tensors(out, name, result.outputs)
        self._compare_gradients(out, rec, grads, result.grad_norm)
        updates = {k: float((params[k].detach() - before[k]).double().norm()) for k in trainable}
        noise = self._noise_floor(rec)
        compared = {k: v for k, v in rec["optimizer_step"].get("update", {}).items()
                    if float(rec["grads"].get(k, {}).get("l2", 0.0)) >= noise or float(v["l2"]) == 0.0}
        out.deviations["update_norms"], out.worst["update_norms"] = _worst(
            {k: _scalar_deviation(updates.get(k, 0.0), float(v["l2"]), _NORM_FLOOR) for k, v in compared.items()})
        return out

    def schedule(self) -> WarmupDecay:
        """The recorded run's lr schedule (its DeepSpeed ``WarmupDecayLR`` parameters)."""
        params = self.record.get("ds_config", {}).get("scheduler", {}).get("params", {})
        if params.get("warmup_type", "linear") != "linear":
            raise GLUSError(f"warm-up type {params.get('warmup_type')!r}: glus implements the linear one",
                            self.folder / "train_step")
        return WarmupDecay(total_steps=int(params.get("total_num_steps", 1)),
                           warmup_steps=int(params.get("warmup_num_steps", 0)))

    @staticmethod
    def _noise_floor(rec: Mapping) -> float:
        return max(_GRAD_NOISE_FRACTION * float(rec["grad_global_l2_fp64"]), _NORM_FLOOR)

    def _compare_losses(self, out: RecordCheck, rec: Mapping, outputs) -> None:
        ours = {k: float(v.detach()) for k, v in outputs.losses.items()}
        skipped = outputs.contrastive is None or outputs.contrastive.skipped
        devs = {}
        for key, terms in _LOSS_NAMES.items():
            theirs = rec["losses"].get(key)
            if key == "contrastive_loss":
                if (theirs is None) != skipped:
                    out.sets["contrastive_active"] = False
                    out.notes.append(f"contrastive term {'off' if skipped else 'on'} in glus, "
                                     f"{'off' if theirs is None else 'on'} in the record")
                    continue
                out.sets["contrastive_active"] = True
                if theirs is None:
                    continue
            devs[key] = _scalar_deviation(sum(ours[t] for t in terms), float(theirs), _LOSS_FLOOR)
        out.deviations["losses"], out.worst["losses"] = _worst(devs)

    def _compare_tensors(self, out: RecordCheck, name: str, outputs) -> None:
        for quantity, ours, key in (("seg_embeddings", outputs.seg_embeddings, "seg_embeddings"),
                                    ("mask_logits", outputs.mask_logits, "pred_mask_logits")):
            devs = {f"sample{i}": _tensor_deviation(t, self.array(name, f"{key}/sample{i}"))
                    for i, t in enumerate(ours)}
            out.deviations[quantity], out.worst[quantity] = _worst(devs)

    def _compare_gradients(self, out: RecordCheck, rec: Mapping, grads: Mapping[str, torch.Tensor | None],
                           grad_norm: float) -> None:
        recorded = rec["grads"]
        noise = self._noise_floor(rec)
        devs, no_grad, zero = {}, {}, {}
        for key, info in recorded.items():
            grad = grads.get(key)
            norm = 0.0 if grad is None else float(grad.double().norm())
            devs[key] = _scalar_deviation(norm, float(info["l2"]), noise)
            no_grad[key] = (grad is None) == (not info["autograd_grad"])
            zero[key] = (grad is None or not bool(grad.any())) == bool(info["exactly_zero"])
        devs["<global>"] = _scalar_deviation(grad_norm, float(rec["grad_global_l2_fp64"]), _NORM_FLOOR)
        out.deviations["grad_norms"], out.worst["grad_norms"] = _worst(devs)
        out.sets["no_gradient"] = all(no_grad.values()) and set(recorded) == set(grads)
        out.sets["zero_gradient"] = all(zero.values())
        for label, table in (("no-gradient", no_grad), ("zero-gradient", zero)):
            wrong = [k for k, ok in table.items() if not ok]
            if wrong:
                out.notes.append(f"{label} status differs for {len(wrong)} tensor(s), e.g. {wrong[:3]}")


def check_official(folder: str | Path, records: Sequence[str] | None = None) -> list[RecordCheck]:
    """Check every record of ``folder/train_step`` (or the named ones); see the module docstring."""
    step = OfficialTrainStep(folder)
    names = list(records) if records else list(step.records)
    return [step.check(name) for name in names]
