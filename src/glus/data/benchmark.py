"""A synthetic RefVOS benchmark whose expressions need what GLUS claims to solve, in named tiers.

Every video is one *scenario* of one tier, drawn from a seed; its expressions are written by the grammar below
and refer to objects whose masks are exact (the shapes and rendering of :mod:`glus.data.synthetic`: flat saturated
colours on a noisy textured background, later objects occluding earlier ones, masks = visible pixels).

Tiers and their grammar (``C`` a colour, ``S`` a shape, ``D`` a direction: left, right, up, down). Each referred
object has two expressions, the phrasing below and a paraphrase (``the S that is C``, ``the C S that goes D``,
``... that comes to a stop`` / ``never stops`` / ``starts late`` / ``moves all along`` / ``appears later`` /
``disappears`` / ``goes behind the C2 S2`` / ``is always visible``, ``the two S that go D``), as MeViS has several
expressions per object: the object contrastive loss needs them (same object, other expression: its positive).

=============  ==========================================================================================
tier           scenario and expressions
=============  ==========================================================================================
appearance     2-3 objects of distinct colour and shape, each moving or still: ``the C S`` (one object).
motion         two objects of the same colour and shape moving in opposite directions, plus one other:
               ``the C S moving D`` (either of the twins); the twin's look alone is ambiguous.
temporal       two same-looking objects moving the same way; one stops halfway, or one starts moving only
               halfway: ``the C S that stops halfway`` / ``the C S that keeps moving`` /
               ``the C S that starts moving later`` / ``the C S that moves from the start``.
visibility     an object entering the view halfway, leaving it halfway, or passing behind a larger one,
               next to a same-looking twin that stays in view: ``the C S that enters the view`` /
               ``the C S that leaves the view`` / ``the C S that passes behind the C2 S2`` and
               ``the C S that stays in view``.
multi          three objects of one shape: two moving ``D``, one moving the other way, plus one other:
               ``the two S moving D`` (two objects, the union of their masks) and ``the S moving D'``.
=============  ==========================================================================================

:func:`make_benchmark_video` draws one scenario; :func:`write_benchmark` writes ``train`` / ``val`` / ``test``
splits in MeViS layout (``<split>/JPEGImages``, ``meta_expressions.json``, ``mask_dict.json``) plus
``<split>/tiers.json`` (``{video: {exp_id: tier}}``). Video ``i`` of a split is of tier ``TIERS[i % 5]``, so each
split holds every tier once it has 5 videos; its seed is drawn from ``(seed, split, i)``, so the same arguments
always write the same files.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from glus.data.synthetic import (COLORS, SHAPES, SyntheticExpression, SyntheticObject, SyntheticVideo,
                                 _background, render_shape, write_mevis_split)
from glus.fileio import atomic_write_json

logger = logging.getLogger(__name__)

__all__ = ["TIERS", "SPLITS", "BenchmarkVideo", "make_benchmark_video", "write_benchmark", "read_tiers", "tier_scores",
           "score_predictions"]

TIERS: tuple[str, ...] = ("appearance", "motion", "temporal", "visibility", "multi")
SPLITS: tuple[str, ...] = ("train", "val", "test")
_OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
_STEP = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}


@dataclass
class BenchmarkVideo:
    """A generated video and the tier of each of its expressions (same order as ``video.expressions``)."""

    video: SyntheticVideo
    tier: str
    expression_tiers: list[str]


@dataclass
class _Plan:
    """An object before rendering: look, size and per-frame centres."""

    shape: str
    color: str
    radius: float
    centers: list[tuple[float, float]]
    label: str = "still"


class _Scene:
    def __init__(self, rng: np.random.Generator, num_frames: int, height: int, width: int) -> None:
        self.rng, self.t, self.h, self.w = rng, num_frames, height, width
        self.plans: list[_Plan] = []
        self.expressions: list[SyntheticExpression] = []

    def radius(self, scale: float = 1.0) -> float:
        return float(self.rng.uniform(0.11, 0.15) * min(self.h, self.w) * scale)

    def path(self, radius: float, direction: str | None, *, start: int = 0, stop: int | None = None,
             lane: float | None = None, outside_until: int | None = None, leave_at: int | None = None
             ) -> list[tuple[float, float]]:
        """Centres: still, or moving ``direction`` between frames ``start`` and ``stop`` (inclusive start).

        ``lane`` fixes the coordinate across the motion (a fraction of the frame); ``outside_until`` makes the
        object enter the view from that frame; ``leave_at`` makes it leave the view from that frame.
        """
        t, h, w = self.t, self.h, self.w
        stop = t - 1 if stop is None else stop
        cross = lane if lane is not None else float(self.rng.uniform(0.25, 0.75))
        if direction is None:
            x, y = float(self.rng.uniform(radius, w - radius)), float(self.rng.uniform(radius, h - radius))
            return [(x, y)] * t
        dx, dy = _STEP[direction]
        extent = w if dx else h
        moving = max(stop - start, 1)
        if outside_until is not None:  # enter: out of view before ``outside_until``, well inside at the end
            begin, end = -radius - 1.0, extent * float(self.rng.uniform(0.45, 0.65))
            start, moving = 0, t - 1
            along = [begin + (end - begin) * max(0, min(1, (f - outside_until + 2) / max(t - 1 - outside_until, 1)))
                     if f >= outside_until - 2 else begin for f in range(t)]
        elif leave_at is not None:  # leave: fully out of view from ``leave_at`` on
            begin = extent * float(self.rng.uniform(0.3, 0.5))
            end = extent + radius + 1.0
            along = [begin + (end - begin) * min(1.0, f / max(leave_at, 1)) for f in range(t)]
        else:
            travel = float(self.rng.uniform(0.35, 0.55)) * (extent - 2 * radius)
            begin = float(self.rng.uniform(radius, extent - radius - travel))
            along = [begin + travel * min(1.0, max(0.0, (f - start) / moving)) for f in range(t)]
        if dx + dy < 0:  # left / up: mirror
            along = [extent - a for a in along]
        if dx:
            y = cross * (h - 2 * radius) + radius
            return [(a, y) for a in along]
        x = cross * (w - 2 * radius) + radius
        return [(x, a) for a in along]

    def free_spot(self, radius: float) -> tuple[float, float]:
        """A still position whose disc stays clear of every object added so far, on every frame."""
        best, best_gap = (self.w / 2, self.h / 2), -np.inf
        for _ in range(200):
            x = float(self.rng.uniform(radius, self.w - radius))
            y = float(self.rng.uniform(radius, self.h - radius))
            gap = min((np.hypot(x - cx, y - cy) - radius - p.radius for p in self.plans for cx, cy in p.centers),
                      default=np.inf)
            if gap > 0:
                return x, y
            if gap > best_gap:
                best, best_gap = (x, y), gap
        return best  # crowded: the least-overlapping spot (drawn last, so it stays visible)

    def add(self, shape: str, color: str, centers: list[tuple[float, float]], radius: float, label: str) -> int:
        self.plans.append(_Plan(shape, color, radius, centers, label))
        return len(self.plans) - 1

    def say(self, text: str, paraphrase: str, *objects: int) -> None:
        """Refer to ``objects`` twice, as MeViS annotators often do: two phrasings of one meaning. Same-object
        expressions are what the object contrastive loss pulls together (its positives)."""
        self.expressions.append(SyntheticExpression(text, tuple(objects)))
        self.expressions.append(SyntheticExpression(paraphrase, tuple(objects)))


def _distinct_looks(rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    colors = rng.permutation(list(COLORS))[:n]
    shapes = [str(rng.choice(SHAPES)) for _ in range(n)]
    return [(str(c), s) for c, s in zip(colors, shapes)]


def _appearance(scene: _Scene) -> None:
    rng = scene.rng
    n = int(rng.integers(2, 4))
    for color, shape in _distinct_looks(rng, n):
        r = scene.radius()
        direction = None if rng.random() < 0.3 else str(rng.choice(list(_STEP)))
        centers = [scene.free_spot(r)] * scene.t if direction is None else scene.path(r, direction)
        k = scene.add(shape, color, centers, r, direction or "still")
        scene.say(f"the {color} {shape}", f"the {shape} that is {color}", k)


def _motion(scene: _Scene) -> None:
    rng = scene.rng
    (color, shape), (c2, s2) = _distinct_looks(rng, 2)
    d = str(rng.choice(list(_STEP)))
    r = scene.radius()
    a = scene.add(shape, color, scene.path(r, d, lane=0.2), r, d)
    b = scene.add(shape, color, scene.path(r, _OPPOSITE[d], lane=0.8), r, _OPPOSITE[d])
    r2 = scene.radius(0.8)
    scene.add(s2, c2, [scene.free_spot(r2)] * scene.t, r2, "still")
    scene.say(f"the {color} {shape} moving {d}", f"the {color} {shape} that goes {d}", a)
    scene.say(f"the {color} {shape} moving {_OPPOSITE[d]}", f"the {color} {shape} that goes {_OPPOSITE[d]}", b)


def _temporal(scene: _Scene) -> None:
    rng = scene.rng
    ((color, shape),) = _distinct_looks(rng, 1)
    d = str(rng.choice(list(_STEP)))
    half = scene.t // 2
    r = scene.radius()
    if rng.random() < 0.5:
        a = scene.add(shape, color, scene.path(r, d, stop=half, lane=0.2), r, "stops")
        b = scene.add(shape, color, scene.path(r, d, lane=0.8), r, "keeps")
        scene.say(f"the {color} {shape} that stops halfway", f"the {color} {shape} that comes to a stop", a)
        scene.say(f"the {color} {shape} that keeps moving", f"the {color} {shape} that never stops", b)
    else:
        a = scene.add(shape, color, scene.path(r, d, start=half, lane=0.2), r, "starts")
        b = scene.add(shape, color, scene.path(r, d, lane=0.8), r, "moves")
        scene.say(f"the {color} {shape} that starts moving later", f"the {color} {shape} that starts late", a)
        scene.say(f"the {color} {shape} that moves from the start", f"the {color} {shape} that moves all along", b)


def _visibility(scene: _Scene) -> None:
    rng = scene.rng
    (color, shape), (c2, s2) = _distinct_looks(rng, 2)
    half = scene.t // 2
    r = scene.radius(0.85)
    kind = str(rng.choice(["enters", "leaves", "behind"]))
    d = str(rng.choice(list(_STEP) if kind != "behind" else ["left", "right"]))
    if kind == "enters":
        k = scene.add(shape, color, scene.path(r, d, outside_until=half, lane=0.25), r, "enters")
        scene.say(f"the {color} {shape} that enters the view", f"the {color} {shape} that appears later", k)
    elif kind == "leaves":
        k = scene.add(shape, color, scene.path(r, d, leave_at=half, lane=0.25), r, "leaves")
        scene.say(f"the {color} {shape} that leaves the view", f"the {color} {shape} that disappears", k)
    else:  # passes behind a larger still object (drawn later, so it occludes)
        k = scene.add(shape, color, scene.path(r, d, lane=0.5), r, "behind")
        big = scene.radius(1.6)
        scene.add(s2, c2, [scene.plans[k].centers[scene.t // 2]] * scene.t, big, "still")
        scene.say(f"the {color} {shape} that passes behind the {c2} {s2}",
                  f"the {color} {shape} that goes behind the {c2} {s2}", k)
    stays = scene.add(shape, color, [scene.free_spot(r)] * scene.t, r, "stays")
    scene.say(f"the {color} {shape} that stays in view", f"the {color} {shape} that is always visible", stays)


def _multi(scene: _Scene) -> None:
    rng = scene.rng
    shape = str(rng.choice(SHAPES))
    colors = [str(c) for c in rng.permutation(list(COLORS))[:4]]
    d = str(rng.choice(list(_STEP)))
    r = scene.radius(0.8)
    a = scene.add(shape, colors[0], scene.path(r, d, lane=0.15), r, d)
    b = scene.add(shape, colors[1], scene.path(r, d, lane=0.5), r, d)
    c = scene.add(shape, colors[2], scene.path(r, _OPPOSITE[d], lane=0.85), r, _OPPOSITE[d])
    other = str(rng.choice([s for s in SHAPES if s != shape]))
    r2 = scene.radius(0.7)
    scene.add(other, colors[3], [scene.free_spot(r2)] * scene.t, r2, "still")
    scene.say(f"the two {shape}s moving {d}", f"the two {shape}s that go {d}", a, b)
    scene.say(f"the {shape} moving {_OPPOSITE[d]}", f"the {shape} that goes {_OPPOSITE[d]}", c)


_SCENARIOS = {"appearance": _appearance, "motion": _motion, "temporal": _temporal, "visibility": _visibility,
              "multi": _multi}


def make_benchmark_video(seed: int, tier: str, *, name: str | None = None, num_frames: int = 12, height: int = 64,
                         width: int = 96) -> BenchmarkVideo:
    """One scenario of ``tier`` (see the module docstring); the same arguments always give the same arrays."""
    if tier not in _SCENARIOS:
        raise ValueError(f"unknown tier {tier!r}; choose one of {', '.join(TIERS)}")
    if num_frames < 4:
        raise ValueError(f"a benchmark video needs at least 4 frames (halfway events), got {num_frames}")
    rng = np.random.default_rng(seed)
    scene = _Scene(rng, num_frames, height, width)
    _SCENARIOS[tier](scene)
    frames = _background(rng, num_frames, height, width)
    k = len(scene.plans)
    masks = np.zeros((k, num_frames, height, width), dtype=bool)
    for t in range(num_frames):
        for i, plan in enumerate(scene.plans):  # painter's order: later objects hide earlier ones
            m = render_shape(plan.shape, plan.centers[t], plan.radius, height, width)
            masks[:i, t] &= ~m
            masks[i, t] = m
            frames[t][m] = COLORS[plan.color]
    objects = tuple(SyntheticObject(i, p.shape, p.color, p.label if p.label in _STEP else "still", p.radius,
                                    tuple(p.centers)) for i, p in enumerate(scene.plans))
    video = SyntheticVideo(name=name or f"{tier}{seed}", frames=frames, masks=masks, objects=objects,
                           expressions=tuple(scene.expressions))
    for e in video.expressions:  # every expression must have a target somewhere, or the tier is broken
        if not video.target(e.objects).any():
            raise AssertionError(f"{video.name}: {e.text!r} is never visible")
    return BenchmarkVideo(video, tier, [tier] * len(video.expressions))


def _video_seed(seed: int, split: str, index: int) -> int:
    return int(np.random.default_rng([seed, SPLITS.index(split), index]).integers(2 ** 31))


def write_benchmark(out: str | Path, videos: int | Sequence[int], *, seed: int = 0, num_frames: int = 12,
                    height: int = 64, width: int = 96) -> dict[str, Path]:
    """Write the ``train`` / ``val`` / ``test`` splits (see the module docstring).

    Args:
        videos: videos per split, one number for all or three (train, val, test).
    Returns:
        ``{split: split folder}``.
    """
    counts = [videos] * 3 if isinstance(videos, int) else list(videos)
    if len(counts) != 3 or min(counts) < 1:
        raise ValueError(f"need a positive number of videos per split, got {videos}")
    out = Path(out)
    written = {}
    for split, count in zip(SPLITS, counts):
        made = [make_benchmark_video(_video_seed(seed, split, i), TIERS[i % len(TIERS)],
                                     name=f"{split}{i:04d}", num_frames=num_frames, height=height, width=width)
                for i in range(count)]
        folder = write_mevis_split(out, [m.video for m in made], split=split, with_masks=True)
        atomic_write_json(folder / "tiers.json", {m.video.name: {str(e): tier for e, tier in
                                                                 enumerate(m.expression_tiers)} for m in made},
                          indent=1)
        written[split] = folder
    logger.info("wrote the synthetic benchmark (%s videos, seed %d) to %s", "/".join(map(str, counts)), seed, out)
    return written


def read_tiers(split_dir: str | Path) -> dict[str, str]:
    """``{"<video>_<exp_id>": tier}`` of a benchmark split (its ``tiers.json``)."""
    from glus.fileio import read_json_object

    raw = read_json_object(Path(split_dir) / "tiers.json", "benchmark tiers file")
    return {f"{video}_{exp}": str(tier) for video, exps in raw.items() for exp, tier in dict(exps).items()}


def tier_scores(per_expression: dict[str, dict[str, float]], tiers: dict[str, str]) -> dict[str, dict[str, float]]:
    """J, F and J&F per tier and ``"all"`` from an evaluation's ``per_expression`` (MeViS averaging: mean J and
    mean F over the tier's expressions)."""
    groups: dict[str, list[dict[str, float]]] = {}
    for key, row in per_expression.items():
        if key in tiers:
            groups.setdefault(tiers[key], []).append(row)
            groups.setdefault("all", []).append(row)
    out = {}
    for tier in [*TIERS, "all"]:
        rows = groups.get(tier)
        if rows:
            j = float(np.mean([float(r["J"]) for r in rows]))
            f = float(np.mean([float(r["F"]) for r in rows]))
            out[tier] = {"J": j, "F": f, "J&F": (j + f) / 2, "expressions": len(rows)}
    return out


def score_predictions(split_dir: str | Path, pred_dir: str | Path) -> dict[str, float]:
    """J&F (%, two decimals) per tier and ``"all"`` of a folder of predicted masks for a benchmark split, scored by
    glus's evaluator (:func:`glus.eval.protocols.evaluate`, the MeViS protocol)."""
    from glus.eval.protocols import evaluate  # the evaluator imports the data layer: imported here, not at the top

    result = evaluate("mevis", split_dir, pred_dir)
    tiers = tier_scores(result.summary["per_expression"], read_tiers(split_dir))
    return {name: round(float(score["J&F"]) * 100, 2) for name, score in tiers.items()}
