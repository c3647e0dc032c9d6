"""``glus train`` end to end at the tiny preset on synthetic MeViS-layout data written here.

* settings: unknown keys, bad values and bad data sources are one-line errors; overrides parse as YAML;
* data: a sample is a pure function of (seed, sample number), the same in a DataLoader worker; the sample numbers
  of a step do not depend on how they are split over ranks;
* training: 200 steps halve the total loss and clearly lower the mask loss; the exported model segments;
* resume: N steps, a real SIGKILL, ``--resume``: the parameters of an uninterrupted run, bit for bit;
* DDP: two gloo processes equal one process with the same global batch;
* ablations: each switch changes what it claims.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from glus.cli import main
from glus.data.synthetic import make_video, write_mevis_split
from glus.errors import GLUSError
from glus.prompts import PromptBuilder
from glus.train.config import load_train_config, parse_data_source
from glus.train.data import StepSampler, TrainingSet
from glus.train.trainer import Trainer, latest_checkpoint

from conftest import OFFICIAL_TINY

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mevis(tmp_path_factory) -> Path:
    """Six synthetic videos (3 objects, 7 expressions each) as a MeViS train split."""
    root = tmp_path_factory.mktemp("data")
    videos = [make_video(seed, num_frames=8, height=48, width=64, num_objects=3) for seed in range(6)]
    return write_mevis_split(root / "mevis", videos, split="train")


def settings(mevis: Path, out: Path, *extra: str) -> list[str]:
    """Overrides of a tiny CPU run: SAM-2 at 256 px, no accumulation, no warm-up."""
    return [f"out={out}", "preset=tiny", f"tokenizer={OFFICIAL_TINY}", f"data=[mevis={mevis}:1]",
            "sam2_image_size=256", "grad_accumulation=1", "warmup_steps=0", "lr=1e-3", "threads=1", *extra]


def read_log(run: Path) -> list[dict[str, float]]:
    with open(run / "train_log.csv", newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


# ---------------------------------------------------------------------------------------------- settings
def test_settings_errors_are_one_line(tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "train.yaml"
    cfg.write_text("out: run\npreset: tiny\ntokenizer: tok\ndata: [mevis=d:1]\nstepz: 3\n")
    with pytest.raises(GLUSError, match="unknown setting.*stepz"):
        load_train_config(cfg)
    cfg.write_text("out: run\npreset: tiny\ntokenizer: tok\ndata: [mevis=d:1]\nsteps: many\n")
    with pytest.raises(GLUSError, match="steps: 'many' is not a valid value"):
        load_train_config(cfg)
    with pytest.raises(GLUSError, match="unknown dataset 'coco'"):
        parse_data_source("coco=/data:1")
    with pytest.raises(GLUSError, match="rate must be > 0"):
        parse_data_source("mevis=/data:0")
    assert parse_data_source("mevis=/data/mevis/train:40").rate == 40.0
    assert parse_data_source("refytvos=/data/ytvos").path == "/data/ytvos"
    over = load_train_config(None, ["out=r", "preset=tiny", "tokenizer=t", "data=[mevis=d:2]", "steps=7",
                                    "betas=[0.8, 0.9]", "contrastive=false"])
    assert (over.steps, over.betas, over.contrastive, over.sources()[0].rate) == (7, (0.8, 0.9), False, 2.0)
    for case, needle in ((["steps=0"], "steps must be >= 1"), (["lora_dropout=1.5"], "lora_dropout"),
                         (["dtype=fp16"], "dtype"), (["dtype=bf16"], "CUDA autocast"),
                         (["data=[]"], "no training data"), (["val_data=coco=x"], "unknown dataset")):
        with pytest.raises(GLUSError, match=needle):
            load_train_config(None, ["out=r", "preset=tiny", "tokenizer=t", "data=[mevis=d:1]", *case])
    assert main(["train", f"--config={cfg}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "train.yaml" in err and "Traceback" not in err


def test_bad_data_is_one_line(tmp_path: Path, mevis: Path, capsys) -> None:
    assert main(["train", *settings(tmp_path / "missing", tmp_path / "run")]) == 2
    assert "missing" in capsys.readouterr().err
    short = write_mevis_split(tmp_path / "short", [make_video(0, num_frames=3, height=48, width=64)], split="train")
    assert main(["train", *settings(short, tmp_path / "run2")]) == 2
    err = capsys.readouterr().err
    assert "no video has an expression and at least 4 frames" in err and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------- data
def _training_set(mevis: Path, tokenizer, seed: int = 0, **builder) -> TrainingSet:
    return TrainingSet([parse_data_source(f"mevis={mevis}")], tokenizer, replace(PromptBuilder(), **builder),
                       sam_image_size=256, seed=seed)


def _same(a, b) -> bool:
    return (torch.equal(a.clip_pixels, b.clip_pixels) and torch.equal(a.masks, b.masks)
            and all(torch.equal(x, y) for x, y in zip(a.input_ids, b.input_ids))
            and (a.video, a.expressions, a.frames) == (b.video, b.expressions, b.frames))


def test_samples_are_a_function_of_seed_and_number(mevis: Path, tok) -> None:
    data = _training_set(mevis, tok)
    first, again, other = data[5], data[5], data[6]
    assert _same(first, again) and not _same(first, other)
    assert not _same(first, _training_set(mevis, tok, seed=1)[5])
    assert first.clip_pixels.shape == (8, 3, 224, 224) and first.sam_pixels.shape == (4, 3, 256, 256)
    assert len(first.input_ids) == 3 and first.masks.shape == (3, 4, 48, 64) and first.masks.sum() > 0
    # a DataLoader worker process builds the very same sample
    loader = torch.utils.data.DataLoader(data, sampler=[5], batch_size=1, num_workers=1, collate_fn=list)
    (batch,) = list(loader)
    assert _same(batch[0], first)


def test_step_sampler_numbers_do_not_depend_on_the_split_over_ranks() -> None:
    one = list(StepSampler(batch_size=2, micro_batches=3, steps=4))
    ranks = [list(StepSampler(batch_size=1, micro_batches=3, steps=4, rank=r, world_size=2)) for r in range(2)]
    assert sorted(one) == sorted(ranks[0] + ranks[1]) == list(range(24))
    assert list(StepSampler(2, 3, 4, start_step=2)) == one[12:]  # resuming at step 2 continues the sequence


def test_ablation_switches_change_the_clip(mevis: Path, tok) -> None:
    local = _training_set(mevis, tok, context_frames=0)[3]
    assert local.clip_pixels.shape[0] == 4 and all(int((i == -200).sum()) == 4 for i in local.input_ids)
    global_only = _training_set(mevis, tok, query_frames=1)[3]
    assert global_only.clip_pixels.shape[0] == 5 and global_only.masks.shape[1] == 1
    assert all(int((i == tok.seg_token_id).sum()) == 1 for i in global_only.input_ids)


def test_no_memory_bank_decodes_every_frame_alone(mevis: Path, tok) -> None:
    cfg = load_train_config(None, settings(mevis, Path("unused")))
    trainer = Trainer(cfg)
    base, model, _, _, _ = trainer.prepare()
    model.eval()
    batch = [_training_set(mevis, tok)[i] for i in range(2)]
    with torch.no_grad():
        with_bank = base.forward_train_outputs(batch).mask_logits
        without = base.forward_train_outputs(batch, memory_bank=False).mask_logits
    for a, b in zip(with_bank, without):
        assert torch.equal(a[:, 0], b[:, 0])  # frame 0 has no memory either way
        assert not torch.allclose(a[:, 1:], b[:, 1:])


# ---------------------------------------------------------------------------------------------- training
@pytest.mark.slow
def test_200_steps_halve_the_loss_and_export_a_model_that_segments(mevis: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", *settings(mevis, run, "steps=200", "save_every=100", "batch_size=1")]) == 0
    log = read_log(run)
    assert [int(r["step"]) for r in log] == list(range(1, 201))
    first, last = log[:10], log[-10:]

    def mean(rows, *keys):
        return float(np.mean([sum(r[k] for k in keys) for r in rows]))

    assert mean(last, "total") < 0.5 * mean(first, "total")
    assert mean(last, "bce", "dice") < 0.8 * mean(first, "bce", "dice")
    assert (run / "train_curves.png").stat().st_size > 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000100", "step-000200"]
    from glus.inference.pipeline import GLUSPipeline

    video = make_video(0, num_frames=8, height=48, width=64, num_objects=3)
    pipe = GLUSPipeline.from_pretrained(run / "model")
    result = pipe(list(video.frames), [video.expressions[0].text])[0]
    assert result.masks.shape == (8, 48, 64)


def test_contrastive_switch(mevis: Path, tmp_path: Path) -> None:
    """With the term on it becomes active once the bank holds 128 negatives (step 6 here); off, it never does."""
    on, off = tmp_path / "on", tmp_path / "off"
    assert main(["train", *settings(mevis, on, "steps=7", "save_every=7")]) == 0
    assert main(["train", *settings(mevis, off, "steps=7", "save_every=7", "contrastive=false")]) == 0
    assert any(r["contrastive"] > 0 for r in read_log(on))
    assert all(r["contrastive"] == 0 for r in read_log(off))
    assert not (off / "checkpoints" / "step-000007" / "contrastive-rank0.pt").exists()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(on / "tensorboard"))
    board.Reload()
    assert [e.step for e in board.Scalars("train/total")] == list(range(1, 8))


def test_mask_loss_start_leaves_the_first_steps_to_the_other_terms(mevis: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", *settings(mevis, run, "steps=8", "save_every=8", "mask_loss_start=6",
                                    "contrastive_weight=1.0")]) == 0
    rows = read_log(run)
    assert all(r["bce"] == r["dice"] == 0 and r["ce"] > 0 for r in rows[:6])
    assert all(r["bce"] > 0 and r["dice"] > 0 for r in rows[6:])
    assert rows[5]["contrastive"] > 0  # the bank is full by step 6: the warm-up trains the [SEG] embeddings


def test_click_steps_train_sam2_on_clicks_first(mevis: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert main(["train", *settings(mevis, run, "steps=6", "save_every=6", "click_steps=3", "click_weight=0.5",
                                    "image_grad=true")]) == 0
    rows = read_log(run)
    assert all(r["ce"] == r["bce"] == r["contrastive"] == 0 and r["clicks"] > 0 and r["total"] == r["clicks"]
               for r in rows[:3])
    assert all(r["ce"] > 0 and r["bce"] > 0 and r["clicks"] > 0 for r in rows[3:])


def test_click_steps_must_leave_seg_steps(mevis: Path, tmp_path: Path, capsys) -> None:
    assert main(["train", *settings(mevis, tmp_path / "run", "steps=4", "click_steps=4")]) == 2
    err = capsys.readouterr().err.strip()
    assert "click_steps (4) must be fewer than steps (4)" in err and len(err.splitlines()) == 1


def _run(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    return subprocess.Popen([sys.executable, "-m", "glus", "train", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, **kw)


def test_resume_after_sigkill_equals_an_uninterrupted_run(mevis: Path, tmp_path: Path) -> None:
    steps = ["steps=10", "save_every=3"]
    straight = tmp_path / "straight"
    assert main(["train", *settings(mevis, straight, *steps)]) == 0
    killed = tmp_path / "killed"
    proc = _run(settings(mevis, killed, *steps))
    deadline = time.time() + 300
    while latest_checkpoint(killed) is None:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model").exists()  # killed mid-run
    assert main(["train", *settings(mevis, killed, *steps), "--resume"]) == 0
    a = load_file(str(straight / "checkpoints" / "step-000010" / "trainable.safetensors"))
    b = load_file(str(killed / "checkpoints" / "step-000010" / "trainable.safetensors"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["total"] for r in read_log(straight)] == [r["total"] for r in read_log(killed)]
    # the run records each start's machine, and the model carries the record
    machines = json.loads((killed / "machine.json").read_text())["machines"]
    assert len(machines) == 2 and machines[0]["from_step"] == 0 and machines[1]["from_step"] in (3, 6, 9)
    assert machines[0]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert json.loads((killed / "model" / "training_machine.json").read_text())["machines"] == machines


def test_two_process_ddp_equals_one_process(mevis: Path, tmp_path: Path) -> None:
    common = ["steps=3", "save_every=3", "contrastive=false", "lora_dropout=0", "mem_attn_dropout=0"]
    single = tmp_path / "single"
    assert main(["train", *settings(mevis, single, *common, "batch_size=2")]) == 0
    ddp = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           "29517", "-m", "glus", "train", *settings(mevis, ddp, *common, "batch_size=1")],
                          env=env, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    a = load_file(str(single / "checkpoints" / "step-000003" / "trainable.safetensors"))
    b = load_file(str(ddp / "checkpoints" / "step-000003" / "trainable.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6, msg=key)


def test_full_disk_at_a_checkpoint_is_one_line_and_leaves_no_partial_checkpoint(mevis: Path, tmp_path: Path,
                                                                               monkeypatch, capsys) -> None:
    import errno

    import glus.train.trainer as trainer_module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trainer_module.torch, "save", full)
    run = tmp_path / "run"
    assert main(["train", *settings(mevis, run, "steps=2", "save_every=2"), "--data", f"mevis={mevis}:1"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and err.count("\n") == 1 and "Traceback" not in err
    assert latest_checkpoint(run) is None and not list((run / "checkpoints").iterdir())


@pytest.mark.parametrize("name", ["glus-s", "glus-a", "tiny-cpu"])
def test_shipped_configs_load(name: str) -> None:
    cfg = load_train_config(ROOT / "configs" / "train" / f"{name}.yaml",
                            ["out=o", "data_root=data", "data=[mevis=d:1]",
                             *(["tokenizer=t"] if name == "tiny-cpu" else ["model=m"])])
    if name != "tiny-cpu":
        assert cfg.data_preset == name and cfg.lora_r == 8 and cfg.grad_accumulation == 10
        assert cfg.contrastive == (name == "glus-s") and cfg.steps == {"glus-s": 3000, "glus-a": 5000}[name]


def test_validation_scores_with_glus_inference_and_evaluator(mevis: Path, tmp_path: Path) -> None:
    val = write_mevis_split(tmp_path / "val", [make_video(seed, num_frames=6, height=48, width=64, num_objects=2)
                                               for seed in (10, 11)], split="valid_u")
    run = tmp_path / "run"
    assert main(["train", *settings(mevis, run, "steps=2", "save_every=2", f"val_data=mevis={val}",
                                    "val_every=1", "val_videos=1")]) == 0
    with open(run / "val_log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [1, 2]
    assert all(0.0 <= float(r["J&F"]) <= 1.0 for r in rows)
    segmented = sorted(p.name for p in (run / "val" / "step-000002").iterdir() if p.is_dir())
    assert segmented == ["syn10"]  # val_videos=1: the first video only
    # Validation only looks: the same run without it learns the same weights, bit for bit (so a run with validation
    # and one without, e.g. the embedded model and the ablation's +contrastive, are the same training).
    quiet = tmp_path / "quiet"
    assert main(["train", *settings(mevis, quiet, "steps=2", "save_every=2")]) == 0
    with_val, without = load_file(str(run / "model" / "model.safetensors")), load_file(str(quiet / "model" /
                                                                                            "model.safetensors"))
    assert with_val.keys() == without.keys() and all(with_val[k].equal(without[k]) for k in with_val)


@pytest.mark.parametrize("reinit", [True, False])
def test_start_from_a_checkpoint_and_the_seg_head_quirk(mevis: Path, tmp_path: Path, reinit: bool) -> None:
    """model=: the released-layout checkpoint (tokenizer inside); reinit_seg_head (the authors' default) gives
    text_hidden_fcs a fresh init, as train_ds.py does after loading."""
    from glus.model.checkpoint import from_pretrained

    cfg = load_train_config(None, [f"out={tmp_path / 'run'}", f"model={OFFICIAL_TINY}",
                                   f"vision_tower={OFFICIAL_TINY / 'clip'}",
                                   f"sam2_config={OFFICIAL_TINY / 'sam2_tiny.yaml'}", f"data=[mevis={mevis}:1]",
                                   f"reinit_seg_head={str(reinit).lower()}"])
    base, _, tokenizer, params, trainable = Trainer(cfg).prepare()
    loaded = from_pretrained(OFFICIAL_TINY, vision_tower=OFFICIAL_TINY / "clip",
                             sam2_config=OFFICIAL_TINY / "sam2_tiny.yaml", compat="stored")
    head = "model.text_hidden_fcs.0.0.weight"
    assert torch.equal(params[head].detach(), loaded.state_dict()[head]) != reinit
    assert torch.equal(params["lm_head.weight"].detach(), loaded.state_dict()["lm_head.weight"])
    assert base.seg_token_id == tokenizer.seg_token_id == 700 and head in trainable


def test_start_as_the_authors_from_a_lisa_checkpoint_and_meta_sam2(mevis: Path, tmp_path: Path) -> None:
    """A LISA-layout folder (the tiny checkpoint without [SEG] / <im_start> / <im_end> and its seg head, its
    visual_model tensors left in, unused as LISA's SAM-1 is) + Meta's SAM-2 file: the LLM rows kept, three tokens
    added with fresh rows, SAM-2 as in the Meta file, the seg head fresh."""
    import json
    import shutil

    lisa = tmp_path / "lisa"
    lisa.mkdir()
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        shutil.copy(OFFICIAL_TINY / name, lisa / name)
    shutil.copytree(OFFICIAL_TINY / "clip", lisa / "clip")
    config = json.loads((OFFICIAL_TINY / "config.json").read_text())
    config["vocab_size"] = 700
    (lisa / "config.json").write_text(json.dumps(config))
    state = torch.load(OFFICIAL_TINY / "pytorch_model.bin", map_location="cpu", weights_only=True)
    lisa_state = {k: v[:700].clone() if k in ("model.embed_tokens.weight", "lm_head.weight") else v
                  for k, v in state.items() if not k.startswith("model.text_hidden_fcs.")}
    torch.save(lisa_state, lisa / "pytorch_model.bin")
    cfg = load_train_config(None, [f"out={tmp_path / 'run'}", f"model={lisa}",
                                   f"sam2_checkpoint={OFFICIAL_TINY / 'sam2_tiny.pt'}",
                                   f"sam2_config={OFFICIAL_TINY / 'sam2_tiny.yaml'}", f"data=[mevis={mevis}:1]"])
    base, _, tokenizer, params, _ = Trainer(cfg).prepare()
    assert (len(tokenizer), tokenizer.seg_token_id, tokenizer.im_start_id, tokenizer.im_end_id) == (703, 700, 701, 702)
    embed = params["model.embed_tokens.weight"].detach()
    assert torch.equal(embed[:700], state["model.embed_tokens.weight"][:700])
    assert embed.shape == (703, 64) and 0.005 < float(embed[700:].std()) < 0.05  # N(0, 0.02) rows
    meta = torch.load(OFFICIAL_TINY / "sam2_tiny.pt", map_location="cpu", weights_only=True)["model"]
    sam2 = base.sam2.state_dict()
    assert all(torch.equal(sam2[k], meta[k]) for k in meta)
    assert not torch.equal(params["model.text_hidden_fcs.0.0.weight"].detach(),
                           state["model.text_hidden_fcs.0.0.weight"])
    missing_sam = tmp_path / "nope.pt"
    with pytest.raises(GLUSError, match="SAM-2 checkpoint not found"):
        Trainer(replace(cfg, sam2_checkpoint=str(missing_sam), out=str(tmp_path / "run2"))).prepare()


def test_training_the_image_encoder_too(mevis: Path, tmp_path: Path, tok) -> None:
    """extra_trainable adds parameters to the recipe's set; image_grad lets the loss reach SAM-2's encoder."""
    for image_grad in (False, True):
        cfg = load_train_config(None, settings(mevis, tmp_path / f"run{image_grad}",
                                               "extra_trainable=[visual_model.image_encoder]",
                                               f"image_grad={str(image_grad).lower()}"))
        base, model, _, params, trainable = Trainer(cfg).prepare()
        encoder = [k for k in trainable if k.startswith("model.visual_model.image_encoder.")]
        assert encoder and all(k in trainable for k in params if k.startswith("model.visual_model.image_encoder."))
        batch = [_training_set(mevis, tok)[0]]
        base.forward_train(batch, image_grad=image_grad)["total"].backward()
        reached = [params[k].grad is not None and bool(params[k].grad.any()) for k in encoder]
        assert any(reached) == image_grad


def test_gradient_checkpointing_gives_the_same_step(mevis: Path, tmp_path: Path, tok) -> None:
    batch = [_training_set(mevis, tok)[i] for i in range(2)]
    grads = []
    for checkpointing in (False, True):
        cfg = load_train_config(None, settings(mevis, tmp_path / f"run{checkpointing}", "lora_dropout=0",
                                               "mem_attn_dropout=0",
                                               f"gradient_checkpointing={str(checkpointing).lower()}"))
        base, model, _, params, trainable = Trainer(cfg).prepare()
        assert base.is_gradient_checkpointing == checkpointing
        base.forward_train(batch)["total"].backward()
        grads.append({k: params[k].grad.clone() for k in trainable if params[k].grad is not None})
    assert sorted(grads[0]) == sorted(grads[1])
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], rtol=1e-4, atol=1e-7, msg=key)


def test_curves_are_drawn_from_a_log_a_resumed_run_widened(tmp_path: Path) -> None:
    """A run resumed after an upgrade that added a loss column has empty cells in its old rows: the curves skip
    them instead of failing on float('')."""
    from glus.eval.report import write_csv
    from glus.train.trainer import LOG_COLUMNS, draw_curves

    old = {"step": 1, "lr": 1e-3, "total": 2.0, "ce": 1.0, "bce": 0.5, "dice": 0.5, "contrastive": 0.0,
           "clicks": 0.0, "grad_norm": 1.0, "samples_per_s": 1.0}
    log = tmp_path / "train_log.csv"
    write_csv(log, [old, {**old, "step": 2, "seg_click": 0.7}], LOG_COLUMNS)
    assert draw_curves(log, tmp_path / "curves.png") == tmp_path / "curves.png"
    assert (tmp_path / "curves.png").stat().st_size > 0
