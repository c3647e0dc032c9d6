"""What the fast inference path saves over the reference path: FLOPs, wall-clock and peak memory.

Three measurements (``python benchmarks/inference_cost.py --help``):

1. **FLOPs per (expression, frame) at glus-7b shapes.** Both paths run for real, but on a *recording model*
   (:class:`RecordingModel`): an object with :class:`~glus.model.glus.GLUSModel`'s inference methods that
   records every call's shapes and computes nothing. :class:`~glus.inference.pipeline.FastSegmenter` and
   :func:`~glus.inference.protocol.segment_reference` therefore build their true prompts (PromptBuilder,
   InferenceConversation, tokenizer_image_token), share prefixes by their own rules and keep their own memory
   banks; every step emits ``[SEG]`` (the costliest branch: each step decodes a mask and writes a memory).
   :class:`FlopTable` then prices each recorded call with :class:`torch.utils.flop_counter.FlopCounterMode` on
   a meta-device ``GLUSModel(glus_7b())`` (nothing allocated), once per distinct shape. The counter counts
   matmuls, convolutions and attention (dense: causal masking is not discounted); element-wise work is not
   counted. Text is tokenised with the only tokenizer at hand, the 700-piece BPE of the official tiny
   checkpoint, which splits text into more tokens than LLaMA's 32k vocabulary: both paths get longer text,
   which makes the fast/reference ratio slightly pessimistic (the image tokens that dominate are exact).
2. **Wall-clock at the tiny preset on the CPU**: the official tiny checkpoint (rigged to always say ``[SEG]``)
   on a synthetic video, both paths in the same process, and whether their masks are identical.
3. **Peak RSS of the fast path** on a short and a long synthetic MP4, one subprocess per length, masks
   streamed to PNG files (:class:`~glus.inference.writers.PngMaskSink`). The peak is the child's ``VmHWM``
   (``ru_maxrss`` is reported too, but a child started by vfork + exec inherits its parent's high-water mark
   there); RSS samples during the run show where it grows.

Exit status 0 whatever the numbers say, unless ``--check``: then 1 when a target is missed (fast-path FLOPs
<= 1/2 of the reference's; the two peak RSS values within 20% of each other).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import DynamicCache

from glus.config import GLUSConfig, glus_7b
from glus.inference.frames import FrameStore
from glus.inference.pipeline import FastSegmenter, KeyFrame
from glus.inference.protocol import segment_reference
from glus.inference.results import FramePrediction
from glus.model.glus import GLUSModel, MaskPrediction, SamFrame
from glus.model.memory_bank import MemoryBank
from glus.model.mllm import EmbeddedInputs, LLMOutput, NextToken, PrefixCache
from glus.model.vision_tower import build_vision_tower
from glus.tokenizer import GLUSTokenizer

if TYPE_CHECKING:
    from glus.data.synthetic import SyntheticVideo
    from glus.inference.pipeline import GLUSPipeline

logger = logging.getLogger("glus.benchmarks.inference_cost")

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL_TINY = ROOT / "tests" / "fixtures" / "reference" / "official_tiny"  # the authors' tiny checkpoint, shipped with the tests

FLOP_RATIO_TARGET = 0.5  # fast-path FLOPs at most half the reference's
RSS_SPREAD_TARGET = 1.2  # peak RSS of the long video at most 20% above the short one's (and vice versa)

# MeViS-style expressions for the FLOP replay (only their token counts matter there).
EXPRESSIONS = (
    "the dog running to the left",
    "the cat sitting still on the right",
    "the red car moving forward",
    "the person walking away from the camera",
    "the bird flying up",
    "the horse turning around",
    "the two sheep eating grass",
    "the white rabbit jumping",
    "the man on the bicycle moving right",
    "the black cow standing still",
)

KINDS = ("clip", "sam_encode", "llm", "lm_head", "seg_head", "sam_decode", "mem_encode")


# ============================================================================ recording the call schedule
@dataclass(frozen=True)
class Call:
    """One model call of a replayed schedule.

    Attributes:
        kind: ``"clip"`` (``items`` frames through CLIP + projector), ``"sam_encode"`` (``items`` frames through
            Hiera + FPN), ``"llm"`` (``items`` rows of ``length`` new positions after a cached prefix of
            ``past`` positions; padded rows count in full, as they are computed), ``"lm_head"`` /
            ``"seg_head"`` (``items`` hidden states through ``lm_head`` / ``text_hidden_fcs``),
            ``"sam_decode"`` (one entry attending to ``memories`` stored frames), ``"mem_encode"`` (``items``
            entries through the memory encoder).
    """

    kind: str
    items: int = 1
    length: int = 0
    past: int = 0
    memories: int = 0


class RecordingModel:
    """Stands in for :class:`~glus.model.glus.GLUSModel` in both inference paths: records, computes nothing.

    It has the inference methods the paths call, with the same arguments and result types (tensors of the
    right batch and sequence sizes, zero width where values are not needed). ``generate_one_token`` always
    returns ``[SEG]``; ``sam_decode`` looks up each entry's memories in its real
    :class:`~glus.model.memory_bank.MemoryBank` (so the memory count per step follows the pass's stride rule)
    and writes a placeholder memory under the step.

    Args:
        config: the model whose shapes are recorded (frame counts, tokens per frame, memory settings).
        seg_token_id: the tokenizer's ``[SEG]`` id.
    """

    def __init__(self, config: GLUSConfig, seg_token_id: int) -> None:
        self.config = config
        self.seg_token_id = seg_token_id
        self.calls: list[Call] = []
        self._tokens_per_frame = config.image_tokens_per_frame
        self._memory = torch.zeros(1, 1, 1)  # a stored memory's stand-in ([C, H, W], values unused)

    # -- frames
    def clip_embed_frames(self, frames: Sequence[np.ndarray]) -> torch.Tensor:
        """``[N, tokens_per_frame, 0]``."""
        self.calls.append(Call("clip", len(frames)))
        return torch.zeros(len(frames), self._tokens_per_frame, 0)

    def sam_encode_frame(self, frame: np.ndarray) -> SamFrame:
        self.calls.append(Call("sam_encode", 1))
        return SamFrame(features=None, size=(int(frame.shape[0]), int(frame.shape[1])))  # type: ignore[arg-type]

    # -- language model
    def build_inputs_embeds(self, input_ids: torch.Tensor | Sequence[Sequence[int] | torch.Tensor],
                            image_embeds: torch.Tensor | Sequence[torch.Tensor]) -> EmbeddedInputs:
        """Expanded lengths of the rows (each ``<image>`` id -> ``tokens_per_frame`` positions); right-padded."""
        rows = [torch.as_tensor(r).flatten().tolist() for r in input_ids]
        marker = self.config.image_token_index
        if sum(r.count(marker) for r in rows) != len(image_embeds):
            raise ValueError("image placeholders and image embeddings differ in number")
        lengths = [len(r) + r.count(marker) * (self._tokens_per_frame - 1) for r in rows]
        width = max(lengths)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for b, n in enumerate(lengths):
            mask[b, :n] = 1
        return EmbeddedInputs(inputs_embeds=torch.zeros(len(rows), width, 0), attention_mask=mask,
                              token_positions=torch.zeros(len(rows), 0, dtype=torch.long),
                              lengths=torch.tensor(lengths))

    def prefill(self, prefix: EmbeddedInputs) -> PrefixCache:
        if prefix.batch_size != 1:
            raise ValueError("a prefix must be a single row")
        length = int(prefix.lengths[0])
        self.calls.append(Call("llm", 1, length, 0))
        return PrefixCache(cache=None, length=length, hidden_states=torch.zeros(1, length, 0))  # type: ignore[arg-type]

    def forward_continuation(self, prefix: PrefixCache, continuation: EmbeddedInputs,
                             compute_logits: bool = True) -> LLMOutput:
        batch, length = continuation.inputs_embeds.shape[:2]
        self.calls.append(Call("llm", batch, length, prefix.length))
        if compute_logits:
            self.calls.append(Call("lm_head", batch * length))
        return LLMOutput(logits=None, hidden_states=torch.zeros(batch, length, 0), past_key_values=None)

    def generate_one_token(self, inputs: EmbeddedInputs, prefix: PrefixCache | None = None) -> NextToken:
        batch, length = inputs.inputs_embeds.shape[:2]
        self.calls.append(Call("llm", batch, length, 0 if prefix is None else prefix.length))
        self.calls.append(Call("lm_head", batch))
        self.calls.append(Call("seg_head", batch))
        return NextToken(token_ids=torch.full((batch,), self.seg_token_id, dtype=torch.long),
                         logits=torch.zeros(batch, 0), hidden=torch.zeros(batch, 0),
                         seg_embedding=torch.zeros(batch, 1))

    # -- masks
    def sam_decode(self, frame: SamFrame, seg_embeddings: torch.Tensor, banks: Sequence[MemoryBank],
                   steps: Sequence[int], stride: int) -> list[MaskPrediction]:
        out = []
        for bank, step in zip(banks, steps):
            memories = len(bank.select(step, stride, self.config.num_maskmem))
            self.calls.append(Call("sam_decode", 1, memories=memories))
            self.calls.append(Call("mem_encode", 1))
            bank.add(step, self._memory, self._memory)
            out.append(MaskPrediction(np.zeros(frame.size, dtype=bool), 1.0, 1.0))
        return out


class _CoverageSink:
    """Counts the final predictions (each (expression, frame) must get exactly one)."""

    def __init__(self) -> None:
        self.seen: dict[tuple[int, int], int] = {}

    def put(self, expression_index: int, frame_index: int, prediction: FramePrediction) -> None:
        key = (expression_index, frame_index)
        self.seen[key] = self.seen.get(key, 0) + 1


def _replay_frames(num_frames: int) -> FrameStore:
    # Pixel values never reach the recording model's arithmetic; a small frame keeps the blank masks small.
    return FrameStore([np.zeros((16, 16, 3), dtype=np.uint8)] * num_frames)


def _check_coverage(sink: _CoverageSink, num_expressions: int, num_frames: int, path: str) -> None:
    expected = {(e, f) for e in range(num_expressions) for f in range(num_frames)}
    if set(sink.seen) != expected or any(n != 1 for n in sink.seen.values()):
        raise RuntimeError(f"the {path} replay did not predict every (expression, frame) exactly once")


def replay_fast(config: GLUSConfig, tokenizer: GLUSTokenizer, num_frames: int, expressions: Sequence[str],
                key_frame: KeyFrame = None, max_batch: int = 16) -> list[Call]:
    """The fast path's calls for one video (:class:`FastSegmenter` on a :class:`RecordingModel`)."""
    model = RecordingModel(config, tokenizer.seg_token_id)
    sink = _CoverageSink()
    FastSegmenter(model, tokenizer, max_batch=max_batch).segment(
        _replay_frames(num_frames), list(expressions), [key_frame] * len(expressions), sink)
    _check_coverage(sink, len(expressions), num_frames, "fast")
    return model.calls


def replay_reference(config: GLUSConfig, tokenizer: GLUSTokenizer, num_frames: int, expressions: Sequence[str],
                     key_frame: KeyFrame = None) -> list[Call]:
    """The reference path's calls for one video (:func:`segment_reference` per expression)."""
    model = RecordingModel(config, tokenizer.seg_token_id)
    frames = _replay_frames(num_frames)
    sink = _CoverageSink()
    for index, text in enumerate(expressions):
        segment_reference(model, tokenizer, frames, text, key_frame, sink=sink, expression_index=index)
    _check_coverage(sink, len(expressions), num_frames, "reference")
    return model.calls


# ============================================================================ pricing calls on the meta device
class FlopTable:
    """FLOPs of one unit of each call kind at ``config``'s shapes, counted on a meta-device model.

    Units: one frame (``clip``, ``sam_encode``), one row of ``length`` positions after ``past`` cached ones
    (``llm``), one position (``lm_head``, ``seg_head``), one entry with ``memories`` memories (``sam_decode``,
    memory encoder excluded), one entry (``mem_encode``). Each distinct unit is counted once and cached; a call
    costs ``items`` units (every counted operation is per row / per frame / per entry, so cost is linear in the
    batch).

    Args:
        config: model sizes (default glus-7b).
        output_size: ``(H, W)`` the decoded masks are resized to (bilinear, not a counted operation).
    """

    def __init__(self, config: GLUSConfig | None = None, output_size: tuple[int, int] = (720, 1280)) -> None:
        self.config = config or glus_7b()
        self.output_size = output_size
        with torch.device("meta"):
            model = GLUSModel(self.config)
            tower = build_vision_tower(self.config.vision)
        model.set_vision_tower(tower)
        self.model = model.eval()
        self._units: dict[tuple, int] = {}
        self._sam_features = None

    @staticmethod
    def _count(fn: Callable[[], object]) -> int:
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            fn()
        return int(counter.get_total_flops())

    def unit(self, kind: str, length: int = 0, past: int = 0, memories: int = 0) -> int:
        key = (kind, length, past, memories)
        if key not in self._units:
            self._units[key] = self._measure(kind, length, past, memories)
        return self._units[key]

    def flops(self, call: Call) -> int:
        return call.items * self.unit(call.kind, call.length, call.past, call.memories)

    def _measure(self, kind: str, length: int, past: int, memories: int) -> int:
        model, cfg, meta = self.model, self.config, torch.device("meta")
        hidden = cfg.text.hidden_size
        if kind == "clip":
            size = cfg.vision.image_size
            return self._count(lambda: model.encode_frames_for_llm(torch.empty(1, 3, size, size, device=meta)))
        if kind == "sam_encode":
            size = cfg.sam2.image_size
            return self._count(lambda: model.sam2.encode_image(torch.empty(1, 3, size, size, device=meta)))
        if kind == "llm":
            return self._count(self._llm_call(length, past))
        if kind == "lm_head":
            return self._count(lambda: model.lm_head(torch.empty(1, hidden, device=meta)))
        if kind == "seg_head":
            return self._count(lambda: model.seg_embedding(torch.empty(1, hidden, device=meta)))
        if kind == "sam_decode":
            return self._count(self._decode_call(memories))
        if kind == "mem_encode":
            grid = cfg.sam2.image_size // 16
            return self._count(lambda: model.sam2.encode_memory(
                torch.empty(1, cfg.sam2.d_model, grid, grid, device=meta),
                torch.empty(1, 1, 4 * grid, 4 * grid, device=meta)))
        raise ValueError(f"unknown call kind {kind!r}")

    def _llm_call(self, length: int, past: int) -> Callable[[], object]:
        """LLaMA on one row of ``length`` positions after a ``past``-position KV cache (as ``prefill``,
        ``forward_continuation`` and ``generate_one_token`` run it, ``compute_logits=False``)."""
        text, meta = self.config.text, torch.device("meta")
        head_dim = text.hidden_size // text.num_attention_heads
        kv = (1, text.num_key_value_heads, past, head_dim)
        cache = DynamicCache(ddp_cache_data=[(torch.empty(kv, device=meta), torch.empty(kv, device=meta))
                                             for _ in range(text.num_hidden_layers)]) if past else DynamicCache()
        # A ready 4-D mask: transformers' 2-D mask preparation reads mask values, which meta tensors lack.
        mask = torch.ones(1, 1, length, past + length, dtype=torch.bool, device=meta)
        positions = (past + torch.arange(length, device=meta)).unsqueeze(0)
        embeds = torch.empty(1, length, text.hidden_size, device=meta)
        return lambda: self.model.forward_llm(embeds, mask, past_key_values=cache, use_cache=True,
                                              position_ids=positions, compute_logits=False)

    def _decode_call(self, memories: int) -> Callable[[], object]:
        """:meth:`Sam2Model.decode` of one entry whose bank offers exactly ``memories`` memories."""
        sam, cfg, meta = self.model.sam2, self.config.sam2, torch.device("meta")
        if self._sam_features is None:
            with torch.inference_mode():
                self._sam_features = sam.encode_image(torch.empty(1, 3, cfg.image_size, cfg.image_size, device=meta))
        grid = cfg.image_size // 16
        bank = MemoryBank()
        for step in range(memories):
            bank.add(step, torch.empty(cfg.mem_dim, grid, grid, device=meta),
                     torch.empty(cfg.mem_dim, grid, grid, device=meta))
        # With stride 1, step m attends to steps m-1 .. m-num_maskmem: exactly ``memories`` of them (<= num_maskmem).
        if len(bank.select(memories, 1, cfg.num_maskmem)) != memories:
            raise ValueError(f"{memories} memories exceed num_maskmem={cfg.num_maskmem}")
        prompt = torch.empty(1, 1, self.config.prompt_dim, device=meta)
        features = self._sam_features
        return lambda: sam.decode(features, prompt, [bank], memories, 1, self.output_size, write_memory=False)


@dataclass
class PathCost:
    """FLOPs of one path on one video.

    Attributes:
        name: ``"reference"`` or ``"fast"``.
        calls / items / flops: per call kind (:data:`KINDS`): number of calls, units, FLOPs.
        llm_positions: LLaMA positions computed in all (padding included).
        total: all FLOPs; ``per_expression_frame``: ``total / (expressions * frames)``.
    """

    name: str
    calls: dict[str, int]
    items: dict[str, int]
    flops: dict[str, int]
    llm_positions: int
    total: int
    per_expression_frame: float


def price(name: str, calls: Sequence[Call], table: FlopTable, num_expressions: int, num_frames: int) -> PathCost:
    """Sum the FLOPs of a recorded schedule per call kind."""
    counts = {k: 0 for k in KINDS}
    items = {k: 0 for k in KINDS}
    flops = {k: 0 for k in KINDS}
    for call in calls:
        counts[call.kind] += 1
        items[call.kind] += call.items
        flops[call.kind] += table.flops(call)
    positions = sum(c.items * c.length for c in calls if c.kind == "llm")
    total = sum(flops.values())
    return PathCost(name, counts, items, flops, positions, total, total / (num_expressions * num_frames))


def flop_comparison(num_frames: int = 60, num_expressions: int = 10, key_frame: KeyFrame = None,
                    max_batch: int = 16, tokenizer_path: Path = OFFICIAL_TINY,
                    table: FlopTable | None = None) -> dict:
    """FLOPs of both paths for ``num_expressions`` expressions on a ``num_frames``-frame video (glus-7b shapes).

    Returns:
        ``{"reference": PathCost, "fast": PathCost, "ratio": fast / reference, "settings": {...}}``.
    """
    table = table or FlopTable()
    tokenizer = GLUSTokenizer.from_pretrained(tokenizer_path)
    texts = [EXPRESSIONS[i % len(EXPRESSIONS)] for i in range(num_expressions)]
    ref = price("reference", replay_reference(table.config, tokenizer, num_frames, texts, key_frame), table,
                num_expressions, num_frames)
    fast = price("fast", replay_fast(table.config, tokenizer, num_frames, texts, key_frame, max_batch), table,
                 num_expressions, num_frames)
    return {"reference": ref, "fast": fast, "ratio": fast.total / ref.total,
            "settings": {"frames": num_frames, "expressions": num_expressions, "key_frame": key_frame,
                         "max_batch": max_batch, "tokenizer": str(tokenizer_path)}}


# ============================================================================ wall-clock at tiny
def load_tiny_pipeline(checkpoint: Path = OFFICIAL_TINY) -> GLUSPipeline:
    """The official tiny checkpoint as a :class:`~glus.inference.pipeline.GLUSPipeline` (CPU, fp32)."""
    from glus.inference.pipeline import GLUSPipeline

    checkpoint = Path(checkpoint)
    return GLUSPipeline.from_pretrained(checkpoint, vision_tower=checkpoint / "clip",
                                        sam2_config=checkpoint / "sam2_tiny.yaml", progress=False)


def synthetic_expressions(video: SyntheticVideo, count: int) -> list[str]:
    """``count`` expressions of a synthetic video (its own, repeated when it has fewer)."""
    texts = [e.text for e in video.expressions]
    return [texts[i % len(texts)] for i in range(count)]


def wall_clock(pipe: GLUSPipeline, num_frames: int = 20, num_expressions: int = 4,
               size: tuple[int, int] = (96, 128), key_frame: KeyFrame = None, seed: int = 0) -> dict:
    """Seconds of both paths on one synthetic video (same process, same threads), after a short warm-up.

    Returns:
        ``{"fast_s", "reference_s", "ratio", "identical", "seg_rate", ...}``; ``identical``: the two paths'
        masks are equal; ``seg_rate``: the fraction of (expression, frame) where ``[SEG]`` was generated.
    """
    from glus.data.synthetic import make_video

    video = make_video(seed, num_frames, size[0], size[1], num_objects=3)
    frames = list(video.frames)
    texts = synthetic_expressions(video, num_expressions)
    pipe(frames[:1], texts[:1], mode="fast")  # warm-up: first-call allocations and lazy initialisation
    pipe(frames[:1], texts[:1], mode="reference")
    start = time.perf_counter()
    fast = pipe(frames, texts, key_frame, mode="fast")
    fast_s = time.perf_counter() - start
    start = time.perf_counter()
    ref = pipe(frames, texts, key_frame, mode="reference")
    ref_s = time.perf_counter() - start
    identical = all(np.array_equal(a.masks, b.masks) for a, b in zip(fast, ref))
    seg_rate = float(np.mean([r.seg_generated.mean() for r in fast]))
    return {"frames": num_frames, "expressions": num_expressions, "size": list(size), "key_frame": key_frame,
            "threads": torch.get_num_threads(), "fast_s": fast_s, "reference_s": ref_s,
            "ratio": fast_s / ref_s, "identical": identical, "seg_rate": seg_rate}


# ============================================================================ peak RSS of the fast path
def _proc_status_kb(field: str) -> int | None:
    """A ``/proc/self/status`` memory field in kB (``VmRSS``, ``VmHWM``), or ``None`` off Linux."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class _SamplingSink:
    """Forwards predictions to a sink and samples the RSS at every ``every``-th prediction."""

    def __init__(self, sink, every: int) -> None:
        self.sink = sink
        self.every = max(1, every)
        self.count = 0
        self.samples: list[tuple[int, int | None]] = []

    def put(self, expression_index: int, frame_index: int, prediction: FramePrediction) -> None:
        self.sink.put(expression_index, frame_index, prediction)
        self.count += 1
        if self.count % self.every == 0:
            self.samples.append((self.count, _proc_status_kb("VmRSS")))


def make_rss_video(path: Path, num_frames: int, size: tuple[int, int] = (64, 96), seed: int = 0) -> list[str]:
    """Write a synthetic MP4 of ``num_frames`` frames; returns the video's expressions."""
    from glus.data.synthetic import encode_mp4, make_video

    video = make_video(seed, num_frames, size[0], size[1], num_objects=2)
    encode_mp4(path, video.frames)
    return [e.text for e in video.expressions]


def rss_run(checkpoint: Path, video_path: Path, expressions: Sequence[str], out_dir: Path,
            samples: int = 10, pipe: GLUSPipeline | None = None) -> dict:
    """Run the fast path on ``video_path`` with masks streamed to PNGs; the memory figures of this process.

    Meant to run alone in a fresh process (:func:`measure_peak_rss` starts one per video); ``pipe``, an
    already loaded pipeline, is for tests (the peak then includes whatever the process did before).

    Returns:
        ``{"frames", "seconds", "rss_loaded_kb", "peak_kb" (VmHWM), "ru_maxrss_kb", "rss_trace"}``;
        ``rss_trace`` holds ``(predictions written, VmRSS kB)`` pairs.
    """
    from glus.data.video import open_video
    from glus.inference.writers import PngMaskSink

    pipe = pipe or load_tiny_pipeline(checkpoint)
    loaded = _proc_status_kb("VmRSS")
    source = open_video(video_path)
    num_frames = len(source)
    sink = PngMaskSink([out_dir / str(i) for i in range(len(expressions))], source.frame_names)
    sampling = _SamplingSink(sink, num_frames * len(expressions) // samples)
    start = time.perf_counter()
    pipe(source, list(expressions), mode="fast", sink=sampling)
    seconds = time.perf_counter() - start
    if not all(sink.done(i) for i in range(len(expressions))):
        raise RuntimeError("the fast path left frames without a mask")
    return {"frames": num_frames, "expressions": len(expressions), "seconds": seconds, "rss_loaded_kb": loaded,
            "peak_kb": _proc_status_kb("VmHWM"),
            "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "rss_trace": sampling.samples}


def measure_peak_rss(lengths: Sequence[int], checkpoint: Path = OFFICIAL_TINY, size: tuple[int, int] = (64, 96),
                     num_expressions: int = 1, threads: int = 1) -> list[dict]:
    """:func:`rss_run` in one subprocess per video length; returns their results in order."""
    results = []
    with tempfile.TemporaryDirectory(prefix="glus-rss-") as tmp:
        for n in lengths:
            video = Path(tmp) / f"video{n}.mp4"
            texts = make_rss_video(video, n, size)
            texts = [texts[i % len(texts)] for i in range(num_expressions)]
            cmd = [sys.executable, str(Path(__file__).resolve()), "--rss-child", str(video),
                   "--rss-out", str(Path(tmp) / f"masks{n}"), "--checkpoint", str(checkpoint),
                   "--threads", str(threads), "--rss-texts", json.dumps(texts)]
            logger.info("peak RSS: fast path on %d frames (subprocess)", n)
            proc = subprocess.run(cmd, check=False, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(f"RSS child for {n} frames failed:\n{proc.stderr[-2000:]}")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


# ============================================================================ report
def targets_missed(report: dict) -> list[str]:
    """The targets a report misses (only those it measured)."""
    missed = []
    flops = report.get("flops")
    if flops is not None and flops["ratio"] > FLOP_RATIO_TARGET:
        missed.append(f"fast/reference FLOPs {flops['ratio']:.3f} > {FLOP_RATIO_TARGET}")
    rss = report.get("rss")
    if rss:
        peaks = [r["peak_kb"] for r in rss]
        spread = max(peaks) / min(peaks)
        if spread > RSS_SPREAD_TARGET:
            sizes = ", ".join(f"{r['frames']} frames: {r['peak_kb'] / 1024:.0f} MiB" for r in rss)
            missed.append(f"peak RSS spread {spread:.2f} > {RSS_SPREAD_TARGET} ({sizes})")
    return missed


def _tflops(x: float) -> str:
    return f"{x / 1e12:,.2f}"


def render(report: dict) -> None:
    """Print the tables and ratios."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    flops = report.get("flops")
    if flops is not None:
        ref, fast, s = flops["reference"], flops["fast"], flops["settings"]
        n = s["frames"] * s["expressions"]
        table = Table(title=f"FLOPs at glus-7b shapes: {s['frames']} frames x {s['expressions']} expressions, "
                            f"key frame {s['key_frame']} (TFLOPs per expression-frame; calls / units)")
        table.add_column("call")
        table.add_column("reference", justify="right")
        table.add_column("fast", justify="right")
        for kind in KINDS:
            table.add_row(kind, f"{_tflops(ref.flops[kind] / n)}  ({ref.calls[kind]} / {ref.items[kind]})",
                          f"{_tflops(fast.flops[kind] / n)}  ({fast.calls[kind]} / {fast.items[kind]})")
        table.add_row("LLM positions / (e, f)", f"{ref.llm_positions / n:,.0f}", f"{fast.llm_positions / n:,.0f}")
        table.add_row("[b]total[/b]", f"[b]{_tflops(ref.per_expression_frame)}[/b]",
                      f"[b]{_tflops(fast.per_expression_frame)}[/b]")
        console.print(table)
        console.print(f"fast / reference FLOPs: [b]{flops['ratio']:.3f}[/b] (target <= {FLOP_RATIO_TARGET}); "
                      f"whole video: reference {_tflops(ref.total)} TFLOPs, fast {_tflops(fast.total)} TFLOPs")
        console.print("Text is tokenised with the official tiny 700-piece BPE, which splits text into more tokens "
                      "than LLaMA's 32k vocabulary would; the fast path's ratio is therefore slightly pessimistic. "
                      "Counted: matmuls, convolutions, attention (dense); not element-wise work.")
    wall = report.get("wall")
    if wall is not None:
        console.print(f"Wall-clock, tiny preset on CPU ({wall['threads']} thread(s)), {wall['frames']} frames "
                      f"{wall['size'][0]}x{wall['size'][1]} x {wall['expressions']} expressions: reference "
                      f"{wall['reference_s']:.2f} s, fast {wall['fast_s']:.2f} s, fast / reference "
                      f"[b]{wall['ratio']:.3f}[/b]; masks identical: {wall['identical']}; [SEG] rate "
                      f"{wall['seg_rate']:.2f}")
    rss = report.get("rss")
    if rss:
        table = Table(title="Fast path peak RSS (tiny preset, masks streamed to PNG)")
        for col in ("frames", "expressions", "seconds", "after load MiB", "peak MiB (VmHWM)", "ru_maxrss MiB",
                    "RSS during the run MiB"):
            table.add_column(col, justify="right")
        for r in rss:
            trace = " ".join(f"{kb / 1024:.0f}" for _, kb in r["rss_trace"] if kb is not None)
            table.add_row(str(r["frames"]), str(r["expressions"]), f"{r['seconds']:.1f}",
                          f"{r['rss_loaded_kb'] / 1024:.0f}", f"{r['peak_kb'] / 1024:.0f}",
                          f"{r['ru_maxrss_kb'] / 1024:.0f}", trace)
        console.print(table)
        peaks = [r["peak_kb"] for r in rss]
        console.print(f"peak RSS long / short: [b]{peaks[-1] / peaks[0]:.3f}[/b] "
                      f"(target: within {RSS_SPREAD_TARGET - 1:.0%} of each other)")
    missed = targets_missed(report)
    console.print("targets missed: " + ("; ".join(missed) if missed else "none"))


def _as_json(report: dict) -> dict:
    out = dict(report)
    if "flops" in out:
        flops = dict(out["flops"])
        flops["reference"] = asdict(flops["reference"])
        flops["fast"] = asdict(flops["fast"])
        out["flops"] = flops
    return out


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW, got {text!r}") from None
    return h, w


def _key_frame(text: str) -> KeyFrame:
    if text in ("none", "None"):
        return None
    if text == "auto":
        return "auto"
    return int(text)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--frames", type=int, default=60, help="video length for the FLOP count")
    p.add_argument("--expressions", type=int, default=10, help="expressions for the FLOP count")
    p.add_argument("--key-frame", type=_key_frame, default=None,
                   help="none, auto or a frame index (FLOP count and wall-clock)")
    p.add_argument("--max-batch", type=int, default=16, help="fast path: most prompts per LLM call")
    p.add_argument("--wall-frames", type=int, default=20)
    p.add_argument("--wall-expressions", type=int, default=4)
    p.add_argument("--wall-size", type=_size, default=(96, 128), help="HxW of the wall-clock video")
    p.add_argument("--frames-short", type=int, default=100, help="short video for the peak RSS")
    p.add_argument("--frames-long", type=int, default=1000, help="long video for the peak RSS")
    p.add_argument("--rss-size", type=_size, default=(64, 96), help="HxW of the peak-RSS videos")
    p.add_argument("--rss-expressions", type=int, default=1)
    p.add_argument("--checkpoint", type=Path, default=OFFICIAL_TINY, help="tiny checkpoint (and tokenizer)")
    p.add_argument("--threads", type=int, default=1, help="torch threads for wall-clock and RSS runs")
    p.add_argument("--skip", action="append", default=[], choices=("flops", "wall", "rss"),
                   help="leave a measurement out (repeatable)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    # internal: one peak-RSS measurement in this (fresh) process
    p.add_argument("--rss-child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--rss-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--rss-texts", type=json.loads, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    """All requested measurements as one report dict."""
    report: dict = {}
    if "flops" not in args.skip:
        logger.info("FLOPs: replaying both paths (%d frames, %d expressions) and pricing on the meta device",
                    args.frames, args.expressions)
        report["flops"] = flop_comparison(args.frames, args.expressions, args.key_frame, args.max_batch,
                                          args.checkpoint)
    torch.set_num_threads(args.threads)
    if "wall" not in args.skip:
        logger.info("wall-clock: tiny preset, %d frames x %d expressions", args.wall_frames, args.wall_expressions)
        report["wall"] = wall_clock(load_tiny_pipeline(args.checkpoint), args.wall_frames, args.wall_expressions,
                                    args.wall_size, args.key_frame)
    if "rss" not in args.skip:
        report["rss"] = measure_peak_rss([args.frames_short, args.frames_long], args.checkpoint, args.rss_size,
                                         args.rss_expressions, args.threads)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.rss_child is not None:
        torch.set_num_threads(args.threads)
        result = rss_run(args.checkpoint, args.rss_child, args.rss_texts, args.rss_out)
        sys.stdout.write(json.dumps(result) + "\n")
        return 0
    report = run(args)
    render(report)
    if args.json is not None:
        from glus.fileio import atomic_write_json

        atomic_write_json(args.json, _as_json(report), indent=2)
    return 1 if args.check and targets_missed(report) else 0


if __name__ == "__main__":
    sys.exit(main())
