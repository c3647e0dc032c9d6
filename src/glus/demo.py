"""``glus demo``: the embedded model segments the bundled clips offline, scored against their ground truth.

The embedded model (``glus/assets/demo/model``, the ``small`` preset trained by ``glus train`` on the synthetic
benchmark, see ``configs/train/embedded.yaml``) runs through the normal pipeline (:class:`GLUSPipeline`, key-frame
selection on) on the bundled clips (``glus/assets/demo/clips``: the first five videos of the benchmark's test split,
one per tier, in MeViS layout). Output folder::

    DIR/<clip>/overlay.mp4, overlay.gif, overlay_sheet.png   the masks drawn over the clip (upscaled to be seen)
    DIR/masks/<clip>/<exp_id>/<frame>.png                     the masks, in the layout ``glus evaluate`` reads
    DIR/scores.json, DIR/scores.csv                           J, F and J&F per expression, per tier and overall

A clip of the user's own (``video`` and ``expressions``) goes through :func:`glus.inference.segment.segment_to_folder`
instead: the same pipeline, no ground truth to score against. The demo model knows only the benchmark's world
(flat coloured circles, squares and triangles on a textured background); real videos need a released checkpoint.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from glus.errors import GLUSError

logger = logging.getLogger(__name__)

__all__ = ["DEMO_CLIPS", "DEMO_MODEL", "DemoReport", "demo_clips", "run_demo"]

DEMO_ROOT = Path(str(resources.files("glus") / "assets" / "demo"))
DEMO_MODEL = DEMO_ROOT / "model"
DEMO_CLIPS = DEMO_ROOT / "clips"
DISPLAY_SCALE = 4  # the clips are 64 x 96: drawn 4x larger (nearest neighbour) so the legend can be read


@dataclass
class DemoReport:
    """What :func:`run_demo` did.

    Attributes:
        out_dir: the output folder.
        rows: per expression ``{"clip", "exp_id", "tier", "expression", "J", "F", "J&F"}`` (scores ``None`` for a
            clip without ground truth).
        tiers: ``{tier: {"J", "F", "J&F", "expressions"}}`` and ``"all"`` (empty without ground truth).
        overlays: per clip, the overlay video.
        seconds: from loading the model to the last file.
    """

    out_dir: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    tiers: dict[str, dict[str, float]] = field(default_factory=dict)
    overlays: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0


def demo_clips() -> list[str]:
    """Names of the bundled clips."""
    from glus.data.formats import load_dataset

    return list(load_dataset("mevis", DEMO_CLIPS).videos)


def run_demo(out_dir: str | Path, *, clips: Sequence[str] | None = None, video: str | Path | None = None,
             expressions: Sequence[str] = (), model: str | Path | None = None, device: str = "cpu",
             key_frame: str = "auto", progress: bool = True) -> DemoReport:
    """Segment and score the bundled ``clips`` (default: all), or ``expressions`` on the user's ``video``.

    Args:
        out_dir: output folder (see the module docstring); what is there is replaced only once the run is done.
        clips: names of bundled clips (:func:`demo_clips`).
        video, expressions: a clip of the user's own instead (a video file or frame folder) and what to find.
        model: a glus checkpoint folder (default: the embedded model).
        key_frame: ``auto`` (key-frame selection) or ``none`` (one pass from the first frame).

    Raises:
        GLUSError: an unknown clip, expressions without a video (or the reverse), and every bad input
            :func:`~glus.inference.segment.segment_to_folder` refuses.
    """
    model = Path(model) if model is not None else DEMO_MODEL
    if video is not None or expressions:
        if video is None:
            raise GLUSError("-e needs --video: the bundled clips come with their own expressions")
        if not expressions:
            raise GLUSError("--video needs at least one -e expression")
        if clips:
            raise GLUSError("give either --clip or --video, not both")
        from glus.inference.segment import segment_to_folder

        started = time.perf_counter()
        written = segment_to_folder(video, expressions, model, out_dir, key_frame=key_frame, device=device)
        rows = [{"clip": Path(video).stem, "exp_id": str(i), "tier": None, "expression": text.strip(),
                 "J": None, "F": None, "J&F": None} for i, text in enumerate(expressions)]
        return DemoReport(written.out_dir, rows, {}, {Path(video).stem: written.overlay} if written.overlay else {},
                          time.perf_counter() - started)
    return _run_bundled(Path(out_dir), clips, model, device, key_frame, progress)


def _run_bundled(out_dir: Path, clips: Sequence[str] | None, model: Path, device: str, key_frame: str,
                 progress: bool) -> DemoReport:
    from glus.data.benchmark import read_tiers, tier_scores
    from glus.data.formats import load_dataset
    from glus.data.video import open_video
    from glus.distributed import check_device, resolve_device
    from glus.eval.protocols import evaluate
    from glus.inference.frames import FrameStore
    from glus.inference.pipeline import GLUSPipeline
    from glus.inference.writers import PngMaskSink, ensure_writable_dir, expression_dir, publish_folder

    data = load_dataset("mevis", DEMO_CLIPS)
    names = list(clips) if clips else list(data.videos)
    unknown = [n for n in names if n not in data.videos]
    if unknown:
        raise GLUSError(f"no bundled clip {unknown[0]!r}; the clips are {', '.join(data.videos)}")
    device = resolve_device(device)
    check_device(device)
    out = ensure_writable_dir(out_dir)
    started = time.perf_counter()
    pipe = GLUSPipeline.from_pretrained(model, device=device, progress=False)
    tiers = read_tiers(DEMO_CLIPS)
    report = DemoReport(out)
    stage = Path(tempfile.mkdtemp(dir=out, prefix=".partial-"))  # published into DIR once everything is written
    try:
        masks_dir = stage / "masks"
        for name in _progress(names, progress):
            clip = data.videos[name]
            exp_ids = list(clip.expressions)
            texts = [clip.expressions[e].text for e in exp_ids]
            dirs = [expression_dir(masks_dir, name, e) for e in exp_ids]
            with FrameStore(open_video(clip.frame_paths)) as frames:
                pipe(frames, texts, key_frame, sink=PngMaskSink(dirs, clip.frame_names))
                _render(frames, dirs, clip.frame_names, texts, stage / name)
            report.overlays[name] = out / name / "overlay.mp4"
        result = evaluate("mevis", DEMO_CLIPS, masks_dir)
        per_expression = result.summary["per_expression"]
        for name in names:
            for exp_id, expression in data.videos[name].expressions.items():
                key = f"{name}_{exp_id}"
                j, f = float(per_expression[key]["J"]), float(per_expression[key]["F"])
                report.rows.append({"clip": name, "exp_id": exp_id, "tier": tiers.get(key),
                                    "expression": expression.text, "J": j, "F": f, "J&F": (j + f) / 2})
        report.tiers = tier_scores({f"{r['clip']}_{r['exp_id']}": r for r in report.rows}, tiers)
        _write_scores(stage, report)
        publish_folder(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    report.seconds = time.perf_counter() - started
    return report


def _progress(names: list[str], enabled: bool):
    if not enabled:
        return names
    from tqdm.auto import tqdm

    return tqdm(names, desc="demo", unit="clip")


def _render(frames, dirs: list[Path], frame_names: list[str], texts: list[str], out: Path) -> None:
    """The overlay video, gif and contact sheet of one clip, from the masks just written, drawn larger."""
    from glus.data.masks import read_mask_png
    from glus.inference.render import render_overlays

    def up(image: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(image, DISPLAY_SCALE, axis=0), DISPLAY_SCALE, axis=1)

    def masks():
        for frame in frame_names:
            yield np.stack([up(read_mask_png(d / f"{frame}.png")) for d in dirs])

    render_overlays((up(frames[i]) for i in range(len(frames))), masks(), texts, out, name="overlay",
                    fps=4.0, frame_names=frame_names, num_frames=len(frames))


def _write_scores(folder: Path, report: DemoReport) -> None:
    from glus.eval.report import write_csv, write_json

    write_json(folder / "scores.json", {"expressions": report.rows, "tiers": report.tiers})
    write_csv(folder / "scores.csv", report.rows, ["clip", "exp_id", "tier", "expression", "J", "F", "J&F"])
