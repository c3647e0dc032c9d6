"""Training-step cost: glus's step (CLIP and SAM-2 features once per clip) against the authors' (once per expression).

The authors' ``train_ds.py`` gives each expression its own copy of the clip: CLIP runs once per conversation and
SAM-2's image encoder once per expression and query frame. glus computes both once per sample and shares them
across the sample's expressions; the LLM, the mask decoder and the losses are the same work either way.

Two measurements, both against a baseline measured in the same run:

* **wall clock** (tiny preset, CPU): samples/s of :func:`glus.train.step.train_step` on synthetic MeViS-layout
  clips with 3 expressions each, against the same step fed the clips split into one-expression samples (which is
  exactly the authors' per-expression feature work: same losses, same gradients);
* **FLOPs per sample at glus-7b shapes**, priced on a meta-device model (nothing allocated) with the call table of
  ``inference_cost.py``: CLIP (K + Q frames) and the SAM-2 image encoder (Q frames) once per sample, or once per
  expression; per expression the LLM over the whole conversation (forward, and a backward through the frozen
  weights counted as one more forward: input gradients only, the LoRA / head weight gradients are negligible),
  per mask the decoder (forward + backward, its weights trained: 3x), memory attention and the memory encoder
  (no gradient: 1x).

Usage: ``python benchmarks/train_speed.py [--steps 6] [--expressions 3] [--threads 1]``
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from glus.config import glus_7b
from glus.data.synthetic import make_video, write_mevis_split
from glus.data.training import TrainingSample
from glus.prompts import PromptBuilder, encode_training_conversation
from glus.tokenizer import GLUSTokenizer
from glus.train.config import load_train_config, parse_data_source
from glus.train.data import TrainingSet
from glus.train.step import StepSettings, adamw, train_step
from glus.train.trainer import Trainer

logger = logging.getLogger("glus.benchmarks.train_speed")
HERE = Path(__file__).resolve().parent
OFFICIAL_TINY = HERE.parent / "tests" / "fixtures" / "reference" / "official_tiny"  # its tiny tokenizer


def _inference_cost():
    spec = importlib.util.spec_from_file_location("inference_cost", HERE / "inference_cost.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def per_expression(samples: list[TrainingSample]) -> list[TrainingSample]:
    """Each sample split into one-expression samples: the authors' layout (features once per expression)."""
    out = []
    for s in samples:
        for e in range(len(s.input_ids)):
            out.append(replace(s, input_ids=[s.input_ids[e]], labels=[s.labels[e]], masks=s.masks[e:e + 1],
                               expressions=s.expressions[e:e + 1], objects=s.objects[e:e + 1]))
    return out


def wall_clock(steps: int, batch: int, threads: int) -> dict[str, float]:
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        videos = [make_video(seed, num_frames=8, height=96, width=128, num_objects=3) for seed in range(4)]
        split = write_mevis_split(root / "mevis", videos, split="train")
        cfg = load_train_config(None, [f"out={root / 'run'}", "preset=tiny", f"tokenizer={OFFICIAL_TINY}",
                                       f"data=[mevis={split}]", "sam2_image_size=512", "contrastive=false"])
        trainer = Trainer(cfg)
        base, model, tokenizer, params, trainable = trainer.prepare()
        data = TrainingSet([parse_data_source(f"mevis={split}")], tokenizer, PromptBuilder.from_config(base.config),
                           base.sam2.config.image_size, base.clip_processor)
        batches = [[data[step * batch + i] for i in range(batch)] for step in range(steps + 1)]
        optimizer = adamw([params[k] for k in trainable])
        rates = {}
        for name, make in (("glus (features once per clip)", lambda b: b),
                           ("authors (features once per expression)", per_expression)):
            train_step(model, [make(batches[0])], optimizer, settings=StepSettings())  # warm-up
            tic = time.perf_counter()
            for b in batches[1:]:
                train_step(model, [make(b)], optimizer, settings=StepSettings())
            rates[name] = steps * batch / (time.perf_counter() - tic)
        return rates


def flops_per_sample(num_expressions: int) -> dict[str, float]:
    ic = _inference_cost()
    config = glus_7b()
    table = ic.FlopTable(config)
    tokenizer = GLUSTokenizer.from_pretrained(OFFICIAL_TINY)
    builder = PromptBuilder.from_config(config)
    ids, _ = encode_training_conversation(
        builder.training_conversation("the dog running to the left", [0] * config.query_frames,
                                      [0] * config.query_frames), tokenizer, builder)
    images = int((ids == config.image_token_index).sum())
    length = len(ids) - images + images * config.image_tokens_per_frame
    k, q, e = config.context_frames, config.query_frames, num_expressions
    clip, sam = table.unit("clip"), table.unit("sam_encode")
    llm = 2 * table.unit("llm", length=length)  # forward + input-gradient backward
    decode = sum(3 * table.unit("sam_decode", memories=min(j, config.num_maskmem - 1)) for j in range(q))
    memory = q * table.unit("mem_encode")
    shared = e * (llm + decode + memory)
    glus = (k + q) * clip + q * sam + shared
    authors = e * ((k + q) * clip + q * sam) + shared
    return {"sequence_length": length, "glus_tflops": glus / 1e12, "authors_tflops": authors / 1e12,
            "ratio": glus / authors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--expressions", type=int, default=3, help="expressions per sample (the recipe's 3)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-wall", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cost = flops_per_sample(args.expressions)
    logger.info("FLOPs per training sample at glus-7b (%d expressions, %d-token conversations):",
                args.expressions, cost["sequence_length"])
    logger.info("  glus %.2f TFLOPs, authors' layout %.2f TFLOPs: ratio %.3f", cost["glus_tflops"],
                cost["authors_tflops"], cost["ratio"])
    if not args.skip_wall:
        rates = wall_clock(args.steps, args.batch, args.threads)
        for name, rate in rates.items():
            logger.info("  tiny preset, CPU, %d thread(s): %s %.3f samples/s", args.threads, name, rate)
        values = list(rates.values())
        logger.info("  speed-up of glus's step: %.2fx", values[0] / values[1])


if __name__ == "__main__":
    main()
