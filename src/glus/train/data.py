"""Training samples drawn from a mix of datasets, each sample a pure function of (seed, sample number).

:class:`TrainingSet` is a map-style torch dataset over *sample numbers*: sample ``n`` draws, from a generator
seeded by ``(seed, n)``, a source by its rate, a video of that source uniformly, up to ``max_expressions`` of its
expressions (without replacement), the clip's frames (:func:`glus.data.sampling.sample_training_frames`: one
context frame per segment, consecutive query frames) and each expression's question / answer phrasings. Frames
and masks are read only then, in the DataLoader worker that builds the sample. A run's position is therefore just
its step: step ``s`` of rank ``r`` uses samples ``(s * world + r) * per_rank + i`` (:class:`StepSampler`), so
resuming, and changing the number of workers, draw the same samples.

The authors' loader draws another video when a video is shorter than a clip; videos that can never give a clip
(fewer frames than ``max(context, query)``, or no expression) are left out when the set is built, and a source
left with none is a one-line error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from glus.data.formats import load_dataset
from glus.data.records import Dataset, Video
from glus.data.sampling import min_training_frames, sample_training_frames
from glus.data.training import TrainingSample
from glus.data.video import read_image_rgb
from glus.errors import GLUSError
from glus.model.sam2_model import preprocess_frame
from glus.model.vision_tower import clip_pixel_values
from glus.prompts import PromptBuilder, encode_training_conversation
from glus.train.config import DataSource

logger = logging.getLogger(__name__)

__all__ = ["TrainingSet", "StepSampler", "collate_samples"]


@dataclass
class _Source:
    spec: DataSource
    dataset: Dataset
    videos: list[Video]


class TrainingSet(torch.utils.data.Dataset):
    """Sample ``n`` of the training mix (see the module docstring).

    Args:
        sources: the datasets and their rates.
        tokenizer: the model's tokenizer (``[SEG]`` included).
        builder: the prompt layout (its ``context_frames`` / ``query_frames`` are the clip's).
        sam_image_size: SAM-2 input size.
        clip_processor: CLIP pre-processor (``None``: OpenAI CLIP's settings).
        seed: the run's seed.
        max_expressions: expressions per sample (fewer when a video has fewer).
    """

    def __init__(self, sources: Sequence[DataSource], tokenizer, builder: PromptBuilder, sam_image_size: int,
                 clip_processor=None, seed: int = 0, max_expressions: int = 3) -> None:
        self.tokenizer, self.builder = tokenizer, builder
        self.sam_image_size, self.clip_processor = sam_image_size, clip_processor
        self.seed, self.max_expressions = int(seed), int(max_expressions)
        need = min_training_frames(builder.context_frames, builder.query_frames)
        self.sources: list[_Source] = []
        for spec in sources:
            dataset = load_dataset(spec.name, spec.path, spec.split)
            if not dataset.has_ground_truth:
                raise GLUSError(f"{spec.name}: this split has no ground-truth masks to train on", spec.path)
            usable = [v for v in dataset.videos.values() if len(v.frame_names) >= need and v.expressions]
            if not usable:
                raise GLUSError(f"{spec.name}: no video has an expression and at least {need} frames "
                                f"({len(dataset.videos)} video(s) in the split)", spec.path)
            if len(usable) < len(dataset.videos):
                logger.info("%s: %d of %d videos are shorter than %d frames or have no expression; left out",
                            spec.name, len(dataset.videos) - len(usable), len(dataset.videos), need)
            self.sources.append(_Source(spec, dataset, usable))
        if not self.sources:
            raise GLUSError("no training data")
        rates = np.array([s.spec.rate for s in self.sources], dtype=np.float64)
        self.probabilities = rates / rates.sum()

    def __len__(self) -> int:
        return 2 ** 62  # sample numbers are unbounded; StepSampler says which ones a run uses

    def rng(self, number: int) -> np.random.Generator:
        """The generator of sample ``number``: every draw of the sample comes from it."""
        return np.random.default_rng([self.seed, int(number)])

    def __getitem__(self, number: int) -> TrainingSample:
        rng = self.rng(number)
        source = self.sources[int(rng.choice(len(self.sources), p=self.probabilities))]
        video = source.videos[int(rng.integers(len(source.videos)))]
        exp_ids = list(video.expressions)
        chosen = [exp_ids[i] for i in sorted(rng.choice(len(exp_ids), size=min(self.max_expressions, len(exp_ids)),
                                                        replace=False).tolist())]
        b = self.builder
        frames = sample_training_frames(len(video.frame_names), b.context_frames, b.query_frames, rng)
        images = {t: read_image_rgb(video.frame_paths[t]) for t in set(frames.all)}
        sizes = {images[t].shape[:2] for t in images}
        if len(sizes) != 1:
            raise GLUSError(f"video {video.video_id}: frames of different sizes {sorted(sizes)}",
                            video.frame_paths[frames.all[0]])
        ids, labels, masks = [], [], []
        for exp_id in chosen:
            expression = video.expressions[exp_id]
            conversation = b.sample_training_conversation(expression.text, rng)
            i, lab = encode_training_conversation(conversation, self.tokenizer, b)
            ids.append(i)
            labels.append(lab)
            masks.append(np.stack([source.dataset.gt_mask(video.video_id, exp_id, t) for t in frames.query]))
        mask_hw = masks[0].shape[1:]
        if tuple(mask_hw) != tuple(next(iter(sizes))):
            raise GLUSError(f"video {video.video_id}: masks are {tuple(mask_hw)} but frames "
                            f"{tuple(next(iter(sizes)))}", video.frame_paths[frames.query[0]])
        return TrainingSample(
            clip_pixels=clip_pixel_values([images[t] for t in frames.all], self.clip_processor),
            sam_pixels=torch.stack([preprocess_frame(images[t], self.sam_image_size) for t in frames.query]),
            input_ids=ids, labels=labels, masks=torch.from_numpy(np.stack(masks)).float(),
            video=video.video_id, expressions=chosen,
            objects=[list(video.expressions[e].obj_ids) for e in chosen],
            frames=[video.frame_names[t] for t in frames.query], dataset=source.spec.name)


class StepSampler(torch.utils.data.Sampler[int]):
    """Sample numbers of a run from ``start_step`` on: per step ``micro_batches x batch_size`` samples of this
    rank, micro-batch by micro-batch (see the module docstring).

    Args:
        steps: the run's last step (exclusive upper bound is ``steps``; steps count from 0 here).
    """

    def __init__(self, batch_size: int, micro_batches: int, steps: int, start_step: int = 0, rank: int = 0,
                 world_size: int = 1) -> None:
        self.batch_size, self.micro_batches = batch_size, micro_batches
        self.steps, self.start_step, self.rank, self.world_size = steps, start_step, rank, world_size

    def per_step(self) -> int:
        return self.batch_size * self.micro_batches

    def __iter__(self) -> Iterator[int]:
        n = self.per_step()
        for step in range(self.start_step, self.steps):
            base = (step * self.world_size + self.rank) * n
            yield from range(base, base + n)

    def __len__(self) -> int:
        return max(0, self.steps - self.start_step) * self.per_step()


def collate_samples(samples: list[TrainingSample]) -> list[TrainingSample]:
    """Samples stay separate (each clip has its own frame size and expression count)."""
    return samples
