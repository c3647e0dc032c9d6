"""``glus train``: the GLUS recipe end to end, on one CPU or under ``torchrun`` (DDP) on many GPUs.

A run folder holds::

    RUN/config.yaml                  the settings the run started with (a resume must use the same)
    RUN/checkpoints/step-000500/     every ``save_every`` steps, the last ``keep_last`` kept:
        trainable.safetensors        the trainable tensors by their released names (LoRA as peft names them)
        optimizer.pt, state.json     AdamW state; step, scheduler, torch RNG, a summary of the losses
        contrastive-rank<r>.pt       each rank's contrastive bank and generator
    RUN/machine.json                 what it ran on (processor, torch's CPU kernels, BLAS, threads), per start
    RUN/train_log.csv                one row per step: losses, lr, grad norm, samples/s
    RUN/train_curves.png             the curves of that log
    RUN/model/                       at the end: LoRA merged, glus format (``glus segment --model RUN/model``),
                                     with the run's machine.json as training_machine.json

A checkpoint is written into a hidden temporary folder and renamed when complete, so an interrupted run never
leaves one that ``--resume`` would take for complete. ``--resume`` continues from the newest: the frozen weights
come from the same start (checkpoint or seeded preset), the trainable ones, the optimizer, the scheduler, the
banks and the RNG from the checkpoint, the data from the step (:mod:`glus.train.data`), so N steps, a kill and a
resume give the parameters of an uninterrupted run.

DDP: each process holds the whole model; gradients are averaged by ``DistributedDataParallel`` (gloo on CPU, NCCL
on CUDA); the optimizer steps the same on every rank. Each rank keeps its own contrastive bank, as the authors'.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from glus.errors import GLUSError
from glus.eval.report import write_csv
from glus.fileio import atomic_write_bytes, atomic_write_json, read_json_object
from glus.model.glus import GLUSModel, TrainForward
from glus.model.losses import ContrastiveConfig, GLUSLossWeights, ObjectContrastiveLoss
from glus.model.adapters import TRAINABLE_PATTERNS, apply_lora, merge_lora
from glus.prompts import PromptBuilder
from glus.train.config import TrainConfig
from glus.train.machine import (MACHINE_FILE, TRAINING_MACHINE_FILE, describe_machine, kernel_differences,
                                read_machines)
from glus.train.schedule import WarmupDecay, warmup_decay_scheduler
from glus.train.step import StepResult, StepSettings, adamw, released_parameter_names, train_step

logger = logging.getLogger(__name__)

__all__ = ["Trainer", "TrainSummary", "export_run", "latest_checkpoint", "draw_curves", "save_figure", "LOG_COLUMNS"]

CHECKPOINTS = "checkpoints"
LOG_NAME = "train_log.csv"
CURVES_NAME = "train_curves.png"
# Settings a resumed run may change: where and how fast it runs, how often it saves or validates, how long it goes.
_FREE_ON_RESUME = frozenset({"out", "steps", "save_every", "keep_last", "num_workers", "threads", "device",
                             "val_data", "val_every", "val_videos", "val_key_frame"})
_REPORT_SECONDS = 60.0  # a progress line in the log (and the CSV on disk) at most this often
LOSS_COLUMNS = ("total", "ce", "bce", "dice", "contrastive", "clicks", "seg_click")
LOG_COLUMNS = ("step", "lr", *LOSS_COLUMNS, "grad_norm", "samples_per_s")


@dataclass
class TrainSummary:
    """What a run did: the step it ended at, the last losses, where the model went."""

    step: int
    losses: dict[str, float]
    model_dir: Path | None
    seconds: float


def latest_checkpoint(run: Path) -> Path | None:
    """The newest complete checkpoint folder of a run (temporary folders of an interrupted save are not)."""
    folder = run / CHECKPOINTS
    if not folder.is_dir():
        return None
    done = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-")
                  and (p / "state.json").is_file())
    return done[-1] if done else None


class _Forward(nn.Module):
    """Makes the training forward a module ``forward`` so DistributedDataParallel can wrap it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> TrainForward:
        return self.model.forward_train_outputs(*args, **kwargs)


class _DDPModel:
    """What :func:`train_step` calls: the forward through DDP (gradient all-reduce), everything else as is."""

    def __init__(self, ddp: nn.parallel.DistributedDataParallel) -> None:
        self.ddp = ddp

    def forward_train_outputs(self, *args: Any, **kwargs: Any) -> TrainForward:
        return self.ddp(*args, **kwargs)


class Trainer:
    """One training process (see the module docstring).

    Args:
        config: the run's settings (validated).
        resume: continue from the newest checkpoint of ``config.out``.
    """

    def __init__(self, config: TrainConfig, resume: bool = False) -> None:
        from glus.distributed import check_device, resolve_device, resolve_shard

        self.config = config.validate()
        self.run_dir = Path(config.out)
        self.resume = resume
        process = resolve_shard()  # torchrun's RANK / WORLD_SIZE (one process without torchrun)
        self.rank, self.world = process.index, process.count
        self.device = torch.device(resolve_device(config.device))
        check_device(str(self.device))
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        self._check_run_folder()

    # ------------------------------------------------------------------ set-up
    def _check_run_folder(self) -> None:
        saved = self.run_dir / "config.yaml"
        if self.resume:
            if not saved.is_file():
                raise GLUSError("nothing to resume: no config.yaml in the run folder", self.run_dir)
            import yaml

            before = yaml.safe_load(saved.read_text())
            now = self.config.to_dict()
            diff = [k for k in now if k not in _FREE_ON_RESUME and _plain(before.get(k)) != _plain(now[k])]
            if diff:
                raise GLUSError(f"resume with other settings than the run started with: {', '.join(diff)}", saved)
        elif latest_checkpoint(self.run_dir) is not None:
            raise GLUSError("the run folder holds checkpoints: pass --resume, or choose another out", self.run_dir)

    def _build_model(self) -> tuple[GLUSModel, Any]:
        from glus.tokenizer import GLUSTokenizer

        cfg = self.config
        torch.manual_seed(cfg.seed)  # the frozen start of a preset, LoRA's A and the heads: the same on resume
        if cfg.preset is not None:
            from glus.config import preset
            from glus.model.vision_tower import build_vision_tower

            try:
                model_cfg = preset(cfg.preset)
            except ValueError as exc:
                raise GLUSError(str(exc)) from None
            sam2 = model_cfg.sam2
            if cfg.sam2_image_size is not None:
                grid = cfg.sam2_image_size // 16
                sam2 = replace(sam2, image_size=cfg.sam2_image_size, mem_attn_rope_feat_sizes=(grid, grid))
            if cfg.mem_attn_dropout is not None:
                sam2 = replace(sam2, mem_attn_dropout=cfg.mem_attn_dropout)
            model_cfg = replace(model_cfg, sam2=sam2)
            model = GLUSModel(model_cfg, vision_tower=build_vision_tower(model_cfg.vision))
            tokenizer = GLUSTokenizer.from_pretrained(cfg.tokenizer)
            if len(tokenizer) != model_cfg.text.vocab_size:
                raise GLUSError(f"the tokenizer has {len(tokenizer)} ids, the {cfg.preset} preset "
                                f"{model_cfg.text.vocab_size}", cfg.tokenizer)
            model.seg_token_id = tokenizer.seg_token_id
        else:
            from glus.model.checkpoint import from_pretrained, sam2_config_from_arg
            from glus.model.checkpoint_io import resolve_checkpoint

            if cfg.sam2_image_size is not None:
                raise GLUSError("sam2_image_size applies to a preset; a checkpoint keeps the size it was trained at")
            sam2: Any = cfg.sam2_config
            if cfg.mem_attn_dropout is not None:
                sam2 = replace(sam2_config_from_arg(cfg.sam2_config), mem_attn_dropout=cfg.mem_attn_dropout)
            if cfg.sam2_checkpoint is not None:
                from glus.train.lisa_start import build_from_lisa

                model, tokenizer = build_from_lisa(cfg.model, cfg.sam2_checkpoint, vision_tower=cfg.vision_tower,
                                                   sam2_config=sam2)
            else:
                model = from_pretrained(cfg.model, vision_tower=cfg.vision_tower, sam2_config=sam2,
                                        compat=cfg.compat)
                tokenizer = GLUSTokenizer.from_pretrained(resolve_checkpoint(cfg.model))
        if cfg.reinit_seg_head:
            # train_ds.py rebuilds text_hidden_fcs after loading the checkpoint (its quirk 1): fresh nn.Linear init.
            for module in model.text_hidden_fcs.modules():
                if isinstance(module, nn.Linear):
                    module.reset_parameters()
        # The clip layout the model is trained on is the one it should see at inference (ablations included).
        model.config = replace(model.config, context_frames=cfg.context_frames, query_frames=cfg.query_frames)
        return model.to(self.device), tokenizer

    def prepare(self) -> tuple[GLUSModel, nn.Module, Any, dict[str, nn.Parameter], list[str]]:
        """The model at the run's start: ``(base, peft model, tokenizer, parameters by name, trainable names)``."""
        cfg = self.config
        base, tokenizer = self._build_model()
        model = apply_lora(base, r=cfg.lora_r, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout,
                           target_modules=cfg.lora_targets,
                           trainable_patterns=(*TRAINABLE_PATTERNS, *cfg.extra_trainable))
        if cfg.gradient_checkpointing:
            base.gradient_checkpointing_enable()
        model.train()
        params = released_parameter_names(model)
        return base, model, tokenizer, params, sorted(k for k, p in params.items() if p.requires_grad)

    # ------------------------------------------------------------------ the run
    def run(self) -> TrainSummary:
        from tqdm.auto import tqdm

        cfg = self.config
        started = time.perf_counter()
        if self.world > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        base, model, tokenizer, params, trainable = self.prepare()
        optimizer = adamw([params[k] for k in trainable], lr=cfg.lr, betas=tuple(cfg.betas),
                          weight_decay=cfg.weight_decay)
        scheduler = warmup_decay_scheduler(optimizer, WarmupDecay(cfg.steps, cfg.warmup_steps,
                                                                  cfg.first_step_at_peak))
        contrastive_cfg = ContrastiveConfig(update_bank_first=cfg.contrastive_update_bank_first,
                                            negatives_exclude_same_objects=cfg.contrastive_negatives_exclude_same_objects)
        contrastive = (ObjectContrastiveLoss(contrastive_cfg, seed=cfg.seed * 1000 + self.rank)
                       if cfg.contrastive else None)
        start = 0
        if self.resume:
            start = self._load_checkpoint(params, trainable, optimizer, scheduler, contrastive)
        elif self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            import yaml

            atomic_write_bytes(self.run_dir / "config.yaml",
                               yaml.safe_dump(_plain(cfg.to_dict()), sort_keys=False).encode())
        if self.rank == 0:
            self._record_machine(start)
        step_model: Any = model
        no_sync = None
        if self.world > 1:
            ddp = nn.parallel.DistributedDataParallel(_Forward(model), find_unused_parameters=True)
            step_model, no_sync = _DDPModel(ddp), ddp.no_sync
        autocast = None
        if cfg.dtype == "bf16":
            autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)  # noqa: E731

        loader = self._loader(base, tokenizer, start)
        settings = StepSettings(
            weights=GLUSLossWeights(cfg.ce_weight, cfg.bce_weight, cfg.dice_weight, cfg.contrastive_weight),
            ce_on=cfg.ce_on, memory_grad=cfg.memory_grad, memory_bank=cfg.memory_bank, image_grad=cfg.image_grad,
            click_weight=cfg.click_weight, seg_click_weight=cfg.seg_click_weight, grad_clip=cfg.grad_clip)

        def phase(step: int) -> StepSettings:  # click_steps, and the warm-ups of mask_loss_start, prompt_grad_start
            if step < cfg.click_steps:
                return replace(settings, clicks_only=True)
            now = settings
            if step < cfg.mask_loss_start:
                now = replace(now, weights=replace(now.weights, bce=0.0, dice=0.0))
            if step < cfg.prompt_grad_start:
                now = replace(now, prompt_grad=False)
            return now

        log = _TrainLog(self.run_dir / LOG_NAME, start) if self.rank == 0 else None
        result: StepResult | None = None
        batches = iter(loader)
        per_step = cfg.batch_size * cfg.grad_accumulation * self.world
        last_report = time.perf_counter()
        with tqdm(total=cfg.steps, initial=start, unit="step", desc="train", disable=self.rank != 0 or None,
                  dynamic_ncols=True) as bar:
            for step in range(start, cfg.steps):
                tic = time.perf_counter()
                micro = [next(batches) for _ in range(cfg.grad_accumulation)]
                result = train_step(step_model, micro, optimizer, scheduler, contrastive=contrastive,
                                    settings=phase(step),
                                    no_sync=no_sync, autocast=autocast)
                rate = per_step / max(time.perf_counter() - tic, 1e-9)
                if log is not None:
                    log.add(step + 1, result, rate)
                bar.set_postfix(loss=f"{result.losses['total']:.4f}", lr=f"{result.lr:.2e}",
                                samples_s=f"{rate:.2f}", refresh=False)
                bar.update(1)
                done = step + 1
                if log is not None and time.perf_counter() - last_report > _REPORT_SECONDS:
                    # Without a terminal (a background run) the bar is off: a log line and the CSV instead.
                    last_report = time.perf_counter()
                    left = (cfg.steps - done) * (last_report - started) / max(done - start, 1)
                    logger.info("step %d/%d: loss %.4f, lr %.2e, %.2f samples/s, about %.0f min left", done,
                                cfg.steps, result.losses["total"], result.lr, rate, left / 60)
                    log.flush()
                if done % cfg.save_every == 0 or done == cfg.steps:
                    # The log first: a run killed between the two resumes from the previous checkpoint and drops
                    # the rows after it; killed the other way round, the rows before this checkpoint were lost.
                    if log is not None:
                        log.flush()
                    self._save_checkpoint(done, params, trainable, optimizer, scheduler, contrastive, result)
                    if log is not None:
                        draw_curves(self.run_dir / LOG_NAME, self.run_dir / CURVES_NAME)
                if cfg.val_data is not None and self.rank == 0 and (
                        done == cfg.steps or (cfg.val_every and done % cfg.val_every == 0)):
                    scores = self.validate(base, tokenizer, done)
                    model.train()
                    if log is not None:
                        log.add_validation(done, scores)
        if log is not None:
            log.flush()
        model_dir = None
        if self.rank == 0:
            model_dir = self.export(model, tokenizer)
        if self.world > 1:
            torch.distributed.barrier()
        losses = result.losses if result is not None else {}
        return TrainSummary(cfg.steps, losses, model_dir, time.perf_counter() - started)

    def _loader(self, base: GLUSModel, tokenizer, start: int) -> torch.utils.data.DataLoader:
        from glus.train.data import StepSampler, TrainingSet, collate_samples

        cfg = self.config
        builder = replace(PromptBuilder.from_config(base.config), context_frames=cfg.context_frames,
                          query_frames=cfg.query_frames)
        dataset = TrainingSet(cfg.sources(), tokenizer, builder, base.sam2.config.image_size, base.clip_processor,
                              seed=cfg.seed, max_expressions=cfg.max_expressions)
        sampler = StepSampler(cfg.batch_size, cfg.grad_accumulation, cfg.steps, start, self.rank, self.world)
        # Its own generator: the loader draws a worker seed from it when iterated, which must not shift the global
        # RNG that dropout uses (a resumed run restores that RNG and would then be one draw off).
        return torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                                           collate_fn=collate_samples, num_workers=cfg.num_workers,
                                           generator=torch.Generator().manual_seed(cfg.seed))

    # ------------------------------------------------------------------ validation
    def validate(self, base: GLUSModel, tokenizer, step: int) -> dict[str, float]:
        """J, F and J&F of the model as it is now on ``val_data``, through glus's own inference and evaluator
        (predictions kept under ``RUN/val/step-N``)."""
        from glus.data.formats import load_dataset
        from glus.data.video import open_video
        from glus.eval.protocols import evaluate
        from glus.inference.frames import FrameStore
        from glus.inference.pipeline import GLUSPipeline
        from glus.inference.writers import PngMaskSink, expression_dir
        from glus.train.config import parse_data_source

        cfg = self.config
        source = parse_data_source(cfg.val_data)
        data = load_dataset(source.name, source.path, source.split)
        videos = list(data.videos.values())[:cfg.val_videos]
        out = self.run_dir / "val" / f"step-{step:06d}"
        pipe = GLUSPipeline(base, tokenizer, progress=False)
        key = "auto" if cfg.val_key_frame == "auto" else None
        with torch.no_grad():
            for video in videos:
                exp_ids = list(video.expressions)
                sink = PngMaskSink([expression_dir(out, video.video_id, e) for e in exp_ids], video.frame_names)
                with FrameStore(open_video(video.frame_paths)) as frames:
                    pipe(frames, [video.expressions[e].text for e in exp_ids], key, sink=sink)
        result = evaluate(source.name, source.path, out, split=source.split)
        scores = {k: float(result.summary[k]) for k in ("J", "F", "J&F")}
        if len(videos) < len(data.videos):
            # The evaluator scores the videos left out as missing (0): average the segmented ones' expressions
            # instead, the MeViS way (mean J and mean F over expressions).
            keys = {e.key for v in videos for e in v.expressions.values()}
            rows = [r for k, r in result.summary["per_expression"].items() if k in keys]
            j = sum(float(r["J"]) for r in rows) / len(rows)
            f = sum(float(r["F"]) for r in rows) / len(rows)
            scores = {"J": j, "F": f, "J&F": (j + f) / 2}
        logger.info("step %d validation on %d video(s): J&F %.4f (J %.4f, F %.4f)", step, len(videos),
                    scores["J&F"], scores["J"], scores["F"])
        return scores

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, step: int, *args: Any) -> None:
        """Write the checkpoint of ``step`` (see :meth:`_write_checkpoint`); a full disk or an unwritable folder is
        a one-line error and leaves no partial checkpoint behind."""
        tmp = self.run_dir / CHECKPOINTS / f".step-{step:06d}.tmp"
        try:
            self._write_checkpoint(step, *args)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise GLUSError(f"cannot write the step-{step} checkpoint: {exc.strerror or exc}; the newest complete "
                            "one is kept for --resume", self.run_dir / CHECKPOINTS) from None

    def _write_checkpoint(self, step: int, params, trainable, optimizer, scheduler, contrastive,
                          result: StepResult) -> None:
        from safetensors.torch import save_file

        folder = self.run_dir / CHECKPOINTS
        final = folder / f"step-{step:06d}"
        tmp = folder / f".step-{step:06d}.tmp"
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()
        if contrastive is not None:
            torch.save(contrastive.state_dict(), tmp / f"contrastive-rank{self.rank}.pt")
        if self.rank == 0:
            save_file({k: params[k].detach().cpu().contiguous() for k in trainable}, str(tmp / "trainable.safetensors"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            rng = {"torch": torch.get_rng_state().tolist()}
            if torch.cuda.is_available():
                rng["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
            atomic_write_json(tmp / "state.json", {"step": step, "scheduler": scheduler.state_dict(), "rng": rng,
                                                   "world_size": self.world, "losses": result.losses})
        self._barrier()
        if self.rank == 0:
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            kept = sorted(p for p in folder.iterdir() if p.is_dir() and p.name.startswith("step-"))
            for old in kept[:-self.config.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        self._barrier()

    def load_trainable(self, params, trainable) -> tuple[Path, dict[str, Any]]:
        """Put the newest checkpoint's trainable tensors into ``params``; returns its folder and state."""
        from safetensors.torch import load_file

        found = latest_checkpoint(self.run_dir)
        if found is None:
            raise GLUSError("nothing to resume: no complete checkpoint", self.run_dir / CHECKPOINTS)
        state = read_json_object(found / "state.json", "checkpoint state")
        try:
            tensors = load_file(str(found / "trainable.safetensors"))
        except (OSError, ValueError) as exc:
            raise GLUSError(f"unreadable checkpoint tensors ({exc})", found / "trainable.safetensors") from None
        if sorted(tensors) != trainable:
            raise GLUSError("the checkpoint's trainable tensors are not this model's", found)
        with torch.no_grad():
            for key in trainable:
                params[key].copy_(tensors[key])
        return found, state

    def _load_checkpoint(self, params, trainable, optimizer, scheduler, contrastive) -> int:
        found, state = self.load_trainable(params, trainable)
        if int(state.get("world_size", 1)) != self.world:
            raise GLUSError(f"the checkpoint was written by {state.get('world_size')} process(es), this run "
                            f"has {self.world}: the data order and the banks would differ", found)
        optimizer.load_state_dict(torch.load(found / "optimizer.pt", map_location=self.device, weights_only=True))
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(torch.tensor(state["rng"]["torch"], dtype=torch.uint8))
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["rng"]["cuda"]])
        if contrastive is not None:
            bank = found / f"contrastive-rank{self.rank}.pt"
            contrastive.load_state_dict(torch.load(bank, map_location="cpu", weights_only=False), device=self.device)
        step = int(state["step"])
        logger.info("resuming from %s (step %d)", found, step)
        return step

    def _record_machine(self, start: int) -> None:
        """Append this process's machine to ``RUN/machine.json``; warn when a resume runs on other kernels (its
        steps from here on will not be bit-identical to an uninterrupted run's)."""
        path = self.run_dir / MACHINE_FILE
        machines = read_machines(path) or []
        now = {"from_step": start, **describe_machine(self.device)}
        if machines and (differs := kernel_differences(machines[-1], now)):
            logger.warning("resuming on another machine than step %d ran on (%s): from here on the run is not "
                           "bit-identical to an uninterrupted one", machines[-1]["from_step"], "; ".join(differs))
        atomic_write_json(path, {"machines": [*machines, now]}, indent=1)

    def _barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    # ------------------------------------------------------------------ export
    def export(self, model: nn.Module, tokenizer, out: Path | None = None) -> Path:
        """Merge LoRA and save the model in glus's format (default ``RUN/model``; written aside, then renamed)."""
        from glus.model.checkpoint import save_pretrained

        merged = merge_lora(model)
        merged.eval()
        final = out if out is not None else self.run_dir / "model"
        tmp = final.parent / f".{final.name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_pretrained(merged, tmp, tokenizer, source=f"glus train {self.run_dir}")
        if (self.run_dir / MACHINE_FILE).is_file():  # what it was trained on travels with the model
            shutil.copyfile(self.run_dir / MACHINE_FILE, tmp / TRAINING_MACHINE_FILE)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        logger.info("model (LoRA merged) -> %s", final)
        return final


def export_run(run_dir: str | Path, out: Path | None = None) -> Path:
    """``glus train export RUN``: the newest checkpoint of a run, LoRA merged, in glus's format."""
    from glus.train.config import load_train_config

    run_dir = Path(run_dir)
    config = load_train_config(run_dir / "config.yaml", [f"out={run_dir}"])
    trainer = Trainer(config, resume=True)
    _, model, tokenizer, params, trainable = trainer.prepare()
    trainer.load_trainable(params, trainable)
    return trainer.export(model, tokenizer, out)


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively: what YAML round-trips."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


class _TrainLog:
    """``train_log.csv``: one row per step; a resumed run drops the rows after its checkpoint's step."""

    def __init__(self, path: Path, start: int) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        if path.is_file():
            with open(path, newline="") as fh:
                self.rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= start]
        try:  # TensorBoard where it is installed (``pip install tensorboard``); the CSV always
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(str(path.parent / "tensorboard"), purge_step=start + 1)
        except ImportError:
            self.board = None

    def add(self, step: int, result: StepResult, rate: float) -> None:
        row = {"step": step, "lr": result.lr, "grad_norm": result.grad_norm, "samples_per_s": round(rate, 4)}
        row.update({k: result.losses.get(k, math.nan) for k in LOSS_COLUMNS})
        self.rows.append(row)
        if self.board is not None:
            for key, value in row.items():
                if key != "step":
                    self.board.add_scalar(f"train/{key}", float(value), step)

    def add_validation(self, step: int, scores: dict[str, float]) -> None:
        """Append to ``val_log.csv`` (and TensorBoard) the validation scores of ``step``."""
        path = self.path.parent / "val_log.csv"
        rows = []
        if path.is_file():
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) < step]
        rows.append({"step": step, **scores})
        write_csv(path, rows, ["step", "J", "F", "J&F"])
        if self.board is not None:
            for key, value in scores.items():
                self.board.add_scalar(f"val/{key}", value, step)

    def flush(self) -> None:
        write_csv(self.path, self.rows, LOG_COLUMNS)
        if self.board is not None:
            self.board.flush()


def draw_curves(log_csv: Path, out_png: Path) -> Path | None:
    """Loss terms, lr and grad norm of ``train_log.csv`` against the step, as a PNG (matplotlib, headless)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.info("matplotlib is not installed: no %s", out_png.name)
        return None
    with open(log_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return None
    steps = [int(r["step"]) for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for key in LOSS_COLUMNS:
        # a log written before a term existed has no such column, or empty cells where a resumed run added it
        points = [(step, float(r[key])) for step, r in zip(steps, rows) if r.get(key)]
        if points:
            axes[0].plot(*zip(*points), label=key)
    axes[0].set_title("loss terms (weighted)")
    axes[0].set_yscale("symlog", linthresh=1e-3)
    axes[0].legend()
    axes[1].plot(steps, [float(r["lr"]) for r in rows])
    axes[1].set_title("learning rate")
    axes[2].plot(steps, [float(r["grad_norm"]) for r in rows])
    axes[2].set_title("gradient norm (before clipping)")
    for ax in axes:
        ax.set_xlabel("step")
    return save_figure(fig, out_png)


def save_figure(fig: Any, out_png: Path) -> Path:
    """Write a matplotlib figure as a PNG atomically (a curve being redrawn is never seen half-written), close it."""
    import io

    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write_bytes(out_png, buf.getvalue())
    return out_png
