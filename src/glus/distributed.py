"""Process and device rules shared by every multi-process job (``glus infer``, training): shards, ``torchrun``, CUDA.

Shards. A job over many items (videos) is split into ``N`` shards; the shard of a process comes from explicit
``num_shards`` / ``shard_index`` (a cluster scheduler's array jobs) or from ``torchrun``'s ``RANK`` /
``WORLD_SIZE``; both together nest (``index * WORLD_SIZE + RANK`` of ``N * WORLD_SIZE``). :func:`assign_shards`
divides weighted items deterministically, so every process computes the same division without talking to the
others.

Devices. ``cpu``, ``cuda`` or ``cuda:N``; a bare ``cuda`` under ``torchrun`` is ``cuda:$LOCAL_RANK``
(:func:`resolve_device`), and :func:`check_device` fails on one line, before any model loads, when it is not there.

Nothing here imports torch at module level.
"""

from __future__ import annotations

import heapq
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from glus.errors import GLUSError, ParameterError

__all__ = ["Shard", "assign_shards", "check_device", "env_int", "resolve_device", "resolve_shard"]


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (0-based)."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise GLUSError(f"shard index must be in 0..count-1 with count >= 1, got {self.index} of {self.count}")

    def __str__(self) -> str:
        return f"{self.index}-of-{self.count}"


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    """The integer environment variable ``name`` (``default`` when unset or empty); one-line error if not a number."""
    value = env.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise GLUSError(f"environment variable {name}={value!r} is not an integer") from None


def resolve_shard(num_shards: int | None = None, shard_index: int | None = None,
                  env: Mapping[str, str] | None = None) -> Shard:
    """The shard this process runs: from the arguments, from ``torchrun``'s ``RANK`` / ``WORLD_SIZE``, or both nested.

    Args:
        num_shards, shard_index: an explicit division (both or neither).
        env: the environment (default ``os.environ``).
    """
    env = os.environ if env is None else env
    world = env_int(env, "WORLD_SIZE", 1)
    rank = env_int(env, "RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise GLUSError(f"RANK={rank} / WORLD_SIZE={world} from the environment are inconsistent")
    if (num_shards is None) != (shard_index is None):
        raise ParameterError("{num_shards} and {shard_index} go together")
    if num_shards is None:
        return Shard(rank, world)
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ParameterError(f"{{shard_index}} must be in 0..{num_shards - 1} and {{num_shards}} >= 1, "
                             f"got {{shard_index}} {shard_index} {{num_shards}} {num_shards}")
    return Shard(shard_index * world + rank, num_shards * world)


def assign_shards(weights: Mapping[str, int], num_shards: int) -> list[list[str]]:
    """Split items (videos) into ``num_shards`` lists balanced by weight (greedy, heaviest item first).

    Deterministic: ties go to the lower item id and the lower shard. Within a shard items keep the order of
    ``weights``.

    Args:
        weights: item id -> weight (for videos: expression-frames), in the dataset's order.
        num_shards: ``N >= 1``.

    Returns:
        ``N`` lists of item ids; together they hold every item exactly once.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    loads = [(0, s) for s in range(num_shards)]  # a heap of (load, shard): pop gives the lightest, lowest index
    shards: list[list[str]] = [[] for _ in range(num_shards)]
    for item in sorted(weights, key=lambda v: (-weights[v], v)):
        load, s = heapq.heappop(loads)
        shards[s].append(item)
        heapq.heappush(loads, (load + weights[item], s))
    position = {item: i for i, item in enumerate(weights)}
    return [sorted(items, key=position.__getitem__) for items in shards]


def resolve_device(device: str, env: Mapping[str, str] | None = None) -> str:
    """``cpu``, ``cuda`` or ``cuda:N``; a bare ``cuda`` under ``torchrun`` becomes ``cuda:$LOCAL_RANK``."""
    env = os.environ if env is None else env
    text = str(device).strip().lower()
    if text == "cpu":
        return "cpu"
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match is None:
        raise GLUSError(f"unknown device {device!r}; choose cpu, cuda or cuda:N")
    if match.group(1) is not None:
        return text
    if env.get("LOCAL_RANK", "") != "":
        return f"cuda:{env_int(env, 'LOCAL_RANK', 0)}"
    return "cuda"


def check_device(device: str) -> None:
    """One-line error when a CUDA device is asked for and not there (before any model is loaded)."""
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ParameterError(f"{{device}} {device}: no CUDA device is available to this process")
    index = int(device.split(":")[1]) if ":" in device else 0
    if index >= torch.cuda.device_count():
        raise ParameterError(f"{{device}} {device}: only {torch.cuda.device_count()} CUDA device(s) are visible")
