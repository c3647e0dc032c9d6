"""``glus app``: a web demo (gradio) around the same code path as ``glus segment``.

One model is loaded when the app starts and kept for every request; each run goes through
:func:`glus.inference.segment.segment_to_folder` with that pipeline, so the masks the page offers for download are
exactly those ``glus segment`` writes for the same video, expressions and key-frame mode. A run's files live in a
folder of its own (a fresh name per request under the app's work folder), so several users at once never see
each other's results; runs are queued one at a time (one model, one set of cores).

What the page shows after a run: the overlay video, a strip of frames with the masks drawn, the per-frame quality
scores (and the chosen key frame) plotted per expression, and the masks to download as a PNG zip (the layout of
``glus segment``) and as COCO RLE JSON. A video longer than ``max_frames`` is strided down to at most that many
frames, and the page says so; every user error is one line in the page.

gradio is an optional extra (``pip install 'glus[app]'``): nothing here imports it before :func:`build_app`.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
import threading
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from glus.errors import GLUSError

logger = logging.getLogger(__name__)

__all__ = ["AppRun", "SegmentService", "build_app", "launch"]

UPLOAD = "(your upload)"


@dataclass
class AppRun:
    """What one request produced (all paths inside its own folder).

    Attributes:
        folder: the run's folder; masks: ``masks.zip`` (``<i>/<frame>.png``, ``expressions.json``,
        ``scores.json``); rle: ``masks_rle.json``; overlay: the overlay video; sheet: the strip of frames;
        plot: the per-frame score plot; key_frames: per expression the frame the passes started from;
        message: what the page says about the run.
    """

    folder: Path
    masks: Path
    rle: Path
    overlay: Path
    sheet: Path
    plot: Path
    key_frames: list[int] = field(default_factory=list)
    message: str = ""


class SegmentService:
    """The loaded model and the work folder: what every request of the app shares.

    Args:
        model: a glus checkpoint folder or hub id (default: the embedded demo model).
        work_dir: where the runs' folders go (default: a new temporary folder).
        max_frames: longer videos are strided down to at most this many frames.
    """

    def __init__(self, model: str | Path | None = None, *, device: str = "cpu", dtype: str = "fp32",
                 work_dir: str | Path | None = None, max_frames: int = 120) -> None:
        from glus.demo import DEMO_MODEL
        from glus.distributed import check_device, resolve_device
        from glus.inference.pipeline import GLUSPipeline

        if max_frames < 1:
            raise GLUSError(f"max_frames must be >= 1, got {max_frames}")
        self.device = resolve_device(device)
        check_device(self.device)
        self.model = Path(model) if model is not None and Path(model).exists() else (model or DEMO_MODEL)
        self.pipeline = GLUSPipeline.from_pretrained(self.model, device=self.device, dtype=dtype, progress=True)
        self.work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="glus-app-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.max_frames = max_frames
        self._lock = threading.Lock()  # one model: runs take turns even when the queue lets several through

    def run(self, video: str | Path, expressions: Sequence[str], key_frame: str = "auto") -> AppRun:
        """Segment ``expressions`` (one per entry; blank entries dropped) on ``video`` into a new run folder.

        Raises:
            GLUSError: no video, no expression, or anything :func:`segment_to_folder` refuses (one line each).
        """
        from glus.data.video import open_video
        from glus.inference.segment import segment_to_folder

        if not video:
            raise GLUSError("upload a video or pick a bundled clip first")
        texts = [t.strip() for t in expressions if t.strip()]
        if not texts:
            raise GLUSError("type at least one expression (one per line)")
        if key_frame not in ("auto", "none"):
            raise GLUSError(f"key frame must be auto or none, got {key_frame!r}")
        total = open_video(video).num_frames
        if total == 0:
            raise GLUSError("the video has no frames", Path(video).name)
        stride = max(1, math.ceil(total / self.max_frames))
        folder = self.work_dir / uuid.uuid4().hex
        with self._lock:
            written = segment_to_folder(video, texts, self.model, folder / "masks", key_frame=key_frame,
                                        stride=stride, max_frames=self.max_frames, rle=True, pipeline=self.pipeline)
        masks = folder / "masks"
        scores = json.loads((masks / "scores.json").read_text())
        run = AppRun(folder, folder / "masks.zip", folder / "masks_rle.json", masks / "overlay.mp4",
                     masks / "overlay_sheet.png", folder / "scores.png",
                     key_frames=[int(scores[str(i)]["key_frame"]) for i in range(len(texts))])
        _zip_masks(masks, run.masks, len(texts))
        shutil.copyfile(masks / "masks_rle.json", run.rle)
        _plot_scores(texts, scores, run.plot)
        note = (f" The video has {total} frames: every {stride}-th was segmented ({written.num_frames} frames)."
                if stride > 1 else "")
        run.message = (f"Done: {len(texts)} expression(s) on {written.num_frames} frames in "
                       f"{written.seconds:.1f} s.{note}")
        return run


def _zip_masks(masks: Path, out: Path, num_expressions: int) -> None:
    """The PNG masks in ``glus segment``'s layout, with its ``expressions.json`` and ``scores.json``."""
    tmp = out.with_name(out.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:  # PNGs are compressed already
        for name in ("expressions.json", "scores.json"):
            zf.write(masks / name, name)
        for i in range(num_expressions):
            for png in sorted((masks / str(i)).glob("*.png")):
                zf.write(png, f"{i}/{png.name}")
    tmp.replace(out)


def _plot_scores(texts: Sequence[str], scores: dict[str, Any], out: Path) -> None:
    """Per-frame quality score of each expression, its key frame marked (and the first pass, if one ran)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 2.8))
    for i, text in enumerate(texts):
        entry = scores[str(i)]
        line, = ax.plot(entry["scores"], marker="o", markersize=3, label=text[:40])
        if entry["first_pass_scores"] is not None:
            ax.plot(entry["first_pass_scores"], linestyle=":", color=line.get_color())
        ax.axvline(entry["key_frame"], color=line.get_color(), alpha=0.4)
    ax.set_xlabel("frame")
    ax.set_ylabel("quality score")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("per-frame quality (dotted: first pass; vertical line: key frame)", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    tmp = out.with_name(out.name + ".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(out)


def _bundled_clip(name: str) -> tuple[Path, list[str]]:
    """The frame folder and expression texts of a bundled clip."""
    from glus.data.formats import load_dataset
    from glus.demo import DEMO_CLIPS

    clip = load_dataset("mevis", DEMO_CLIPS).videos[name]
    return Path(clip.frame_paths[0]).parent, [e.text for e in clip.expressions.values()]


def build_app(service: SegmentService):
    """The gradio Blocks of the app (not launched)."""
    import gradio as gr

    from glus.demo import demo_clips

    clips = demo_clips()

    def on_clip(name: str):
        if name == UPLOAD:
            return gr.update()
        return "\n".join(_bundled_clip(name)[1])

    def on_run(upload: str | None, clip: str, expressions: str, key_frame: str,
               progress=gr.Progress(track_tqdm=True)):
        empty = (None, None, None, None, "")
        try:
            video = upload or (str(_bundled_clip(clip)[0]) if clip != UPLOAD else None)
            progress(0, desc="segmenting")
            run = service.run(video, expressions.splitlines(), key_frame)
        except (GLUSError, OSError, ValueError) as exc:
            logger.info("refused a request: %s", exc)
            return (f"**Error:** {_one_line(exc)}", *empty)
        keys = ", ".join(f"expression {i}: frame {k}" for i, k in enumerate(run.key_frames))
        return (run.message, str(run.overlay), str(run.sheet), str(run.plot), [str(run.masks), str(run.rle)],
                f"Key frames ({key_frame}): {keys}")

    with gr.Blocks(title="glus") as app:
        gr.Markdown("# glus: referring video object segmentation\nUpload a video (or pick a bundled clip), write "
                    "what to segment, one expression per line, and run. The default model is the small one "
                    "embedded in glus, trained on synthetic clips of shapes; real videos need a released "
                    "checkpoint (`glus app --model Swindl/GLUS-A`).")
        with gr.Row():
            with gr.Column():
                upload = gr.Video(label="video", sources=["upload"])
                clip = gr.Dropdown([UPLOAD, *clips], value=UPLOAD, label="or a bundled clip")
                expressions = gr.Textbox(label="expressions", lines=3, placeholder="the red square moving up")
                key_frame = gr.Radio(["auto", "none"], value="auto", label="key frame",
                                     info="auto: pick the most reliable frame and propagate both ways")
                button = gr.Button("Segment", variant="primary")
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                overlay = gr.Video(label="overlay", elem_id="overlay", interactive=False)
                key_info = gr.Markdown(elem_id="key-frames")
        sheet = gr.Image(label="frames with masks", type="filepath", interactive=False)
        plot = gr.Image(label="per-frame quality scores", type="filepath", interactive=False)
        files = gr.File(label="masks: PNG zip and COCO RLE", file_count="multiple", interactive=False,
                        elem_id="downloads")
        clip.change(on_clip, clip, expressions)
        button.click(on_run, [upload, clip, expressions, key_frame], [status, overlay, sheet, plot, files, key_info],
                     concurrency_limit=1)
    return app


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def launch(model: str | Path | None = None, *, host: str = "127.0.0.1", port: int | None = None,
           device: str = "cpu", max_frames: int = 120) -> None:
    """Load the model, build the page and serve it until interrupted."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise GLUSError("glus app needs gradio: pip install 'glus[app]'") from None
    service = SegmentService(model, device=device, max_frames=max_frames)
    app = build_app(service)
    logger.info("serving glus app on http://%s:%s (runs in %s)", host, port or 7860, service.work_dir)
    app.queue(default_concurrency_limit=1).launch(server_name=host, server_port=port, share=False,
                                                  allowed_paths=[str(service.work_dir)], show_error=False,
                                                  inbrowser=False)
