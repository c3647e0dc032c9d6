"""Can the embedded model's language model learn to say where the referred object is? A probe without SAM-2.

The embedded model finds the shapes but mostly cannot tell same-looking objects apart (docs/demo.md). Its SAM-2
follows clicks after the click steps, so a ``[SEG]`` prompt that equals SAM-2's prompt of a click at the referred
object's centre would be enough. This script trains only the language side (projector, LLaMA, seg head; the CLIP
tower frozen, SAM-2 taken from a trained model and frozen) on that target alone (``seg_click``: MSE to the click
prompt, :meth:`glus.model.glus.GLUSModel.seg_click_pairs`, plus the ``[SEG]`` cross-entropy), without decoding a
single mask, so thousands of steps take minutes. It reports, on the benchmark's validation split:

* ``mse``: the probe's MSE, next to ``mse_mean``, that of always answering the mean target (a model that has
  learnt nothing about the input sits there);
* ``hit``: how often the click the prompt stands for lands on the object: the grid cell (SAM-2's 16 x 16 grid) whose
  click prompt is nearest the predicted prompt lies inside the target mask (``hit_mean``: the same for the mean).

Run for a preset (``small``, the shipped model's, or ``small-grid``, which sees where its tokens are)::

    python experiments/seg_click_probe.py --preset small --steps 2000 --out experiments/seg_click_probe_small.csv
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
logger = logging.getLogger("seg_click_probe")


def build(preset_name: str, sam2_from: Path, seed: int):
    """A seeded ``preset_name`` model whose SAM-2 is ``sam2_from``'s, and the benchmark's tokenizer."""
    from glus.config import preset
    from glus.errors import GLUSError
    from glus.model.checkpoint import from_pretrained
    from glus.model.glus import GLUSModel
    from glus.model.vision_tower import build_vision_tower
    from glus.tokenizer import GLUSTokenizer

    torch.manual_seed(seed)
    cfg = preset(preset_name)
    model = GLUSModel(cfg, vision_tower=build_vision_tower(cfg.vision))
    trained = from_pretrained(sam2_from)
    if trained.config.sam2 != cfg.sam2:
        raise GLUSError(f"its SAM-2 is not the {preset_name} preset's", sam2_from)
    model.sam2.load_state_dict(trained.sam2.state_dict())
    tokenizer = GLUSTokenizer.from_pretrained(sam2_from)
    model.seg_token_id = tokenizer.seg_token_id
    for name, param in model.named_parameters():
        param.requires_grad_(not name.startswith("model.visual_model."))
    return model, tokenizer


def samples(model, tokenizer, split: Path, seed: int):
    from glus.prompts import PromptBuilder
    from glus.train.config import DataSource
    from glus.train.data import TrainingSet

    builder = PromptBuilder.from_config(model.config)
    return TrainingSet([DataSource("mevis", str(split))], tokenizer, builder, model.sam2.config.image_size,
                       model.clip_processor, seed=seed, max_expressions=3)


def grid_prompts(model) -> tuple[torch.Tensor, torch.Tensor]:
    """The click prompt of every cell centre of SAM-2's feature grid, and the centres (x, y in model pixels)."""
    s = model.sam2.config.image_size
    cells = model.sam2.feat_sizes[-1][0]
    step = s / cells
    ys, xs = torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing="ij")
    centres = torch.stack([xs.flatten(), ys.flatten()], 1).float() * step + step / 2
    with torch.no_grad():
        return model.sam2.click_prompt(centres)[:, 0], centres


@torch.no_grad()
def evaluate(model, data, count: int) -> dict[str, float]:
    """mse / mse_mean / hit / hit_mean on ``count`` validation samples (see the module docstring)."""
    model.eval()
    got, want, masks = [], [], []
    for number in range(count):
        sample = data[number]
        _, (seg,) = model.seg_prompts_train([sample])
        for prompt, target, rows, j in model.seg_click_pairs(sample, seg):
            got.append(prompt)
            want.append(target)
            masks.extend(sample.masks[int(e), j] for e in rows)
    model.train()
    got_t, want_t = torch.cat(got), torch.cat(want)
    mean = want_t.mean(0, keepdim=True)
    grid, centres = grid_prompts(model)
    size = model.sam2.config.image_size

    def hits(prompts: torch.Tensor) -> float:
        nearest = centres[torch.cdist(prompts, grid).argmin(1)]
        inside = []
        for (x, y), mask in zip(nearest.tolist(), masks):
            h, w = mask.shape
            inside.append(bool(mask[min(int(y * h / size), h - 1), min(int(x * w / size), w - 1)] > 0))
        return float(np.mean(inside))

    return {"mse": float(((got_t - want_t) ** 2).mean()), "mse_mean": float(((mean - want_t) ** 2).mean()),
            "hit": hits(got_t), "hit_mean": hits(mean.expand_as(want_t)), "pairs": len(masks)}


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "synth")
    parser.add_argument("--preset", default="small", choices=["small", "small-grid"])
    parser.add_argument("--sam2-from", type=Path, default=ROOT / "src" / "glus" / "assets" / "demo" / "model",
                        help="a trained model of the same SAM-2 size (default: the embedded model)")
    parser.add_argument("--steps", type=_positive, default=2000)
    parser.add_argument("--batch-size", type=_positive, default=2)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=_positive, default=500)
    parser.add_argument("--eval-samples", type=_positive, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=_positive, default=2)
    parser.add_argument("--out", type=Path, required=True, help="CSV of the evaluations")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    from glus.errors import GLUSError

    try:
        return probe(args)
    except GLUSError as exc:  # a missing split or model, a model of another size: one line, no traceback
        parser.exit(2, f"seg_click_probe: error: {exc}\n")


def probe(args: argparse.Namespace) -> int:
    """Train and evaluate as ``main``'s arguments say (see the module docstring)."""
    from glus.eval.report import write_csv
    from glus.train.step import adamw

    model, tokenizer = build(args.preset, args.sam2_from, args.seed)
    model.train()
    train = samples(model, tokenizer, args.data / "train", args.seed)
    val = samples(model, tokenizer, args.data / "val", args.seed + 1)
    optimizer = adamw([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    warmup = min(100, args.steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / max(warmup, 1)) * max(0.0, 1 - s / args.steps))
    rows = []
    recent: list[float] = []
    for step in range(1, args.steps + 1):
        batch = [train[(step - 1) * args.batch_size + i] for i in range(args.batch_size)]
        ce, prompts = model.seg_prompts_train(batch)
        mse = model.seg_click_loss(batch, prompts)
        if mse is None:
            continue
        optimizer.zero_grad(set_to_none=True)
        (ce + mse).backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], 1.0)
        optimizer.step()
        schedule.step()
        recent.append(float(mse.detach()))
        if step % args.eval_every == 0 or step == args.steps:
            scores = evaluate(model, val, args.eval_samples)
            rows.append({"step": step, "train_mse": round(float(np.mean(recent)), 4),
                         **{k: round(v, 4) for k, v in scores.items()}})
            recent = []
            logger.info("step %d: %s", step, rows[-1])
            write_csv(args.out, rows, list(rows[-1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
