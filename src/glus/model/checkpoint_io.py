"""Reading and writing checkpoint files: hub/local resolution, shards, key checks, atomic saves.

This module knows file layouts, not model structure: it returns and accepts flat ``{key: tensor}`` state
dicts. ``glus.model.checkpoint`` maps them onto the model.

Layouts read (spec section 6):

* the released one, as transformers 4.31 ``save_pretrained`` writes it: ``pytorch_model.bin`` or
  ``pytorch_model-0000N-of-0000M.bin`` shards with ``pytorch_model.bin.index.json``;
* safetensors, single (``model.safetensors``) or sharded (``model.safetensors.index.json``), which is also
  glus's own format.
"""

from __future__ import annotations

import contextlib

import logging
import os
import re
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import torch

from glus.errors import GLUSError
from glus.fileio import atomic_path, read_json_object

logger = logging.getLogger(__name__)

# Tensors that released checkpoints hold but that are not weights: transformers 4.31 saved the rotary
# ``inv_freq`` as a persistent buffer of every attention layer; it is recomputed from the config here.
NON_WEIGHT_BUFFER_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"(^|.*\.)layers\.\d+\.self_attn\.rotary_emb\.inv_freq$"),
)


def is_non_weight_buffer_key(key: str) -> bool:
    """True for checkpoint keys that are known non-weight buffers (to be dropped when loading)."""
    return any(p.match(key) for p in NON_WEIGHT_BUFFER_PATTERNS)


def non_weight_buffer_keys(keys: Iterable[str]) -> list[str]:
    """The keys among ``keys`` that :func:`is_non_weight_buffer_key` recognises, in their order."""
    return [k for k in keys if is_non_weight_buffer_key(k)]


def resolve_checkpoint(path_or_id: str | os.PathLike, allow_patterns: Iterable[str] | None = None) -> Path:
    """A local folder for ``path_or_id``: the folder itself, or a hub snapshot downloaded through huggingface_hub.

    Offline (or without huggingface_hub reaching the hub) a hub id fails with one clear line.
    """
    path = Path(path_or_id).expanduser()
    if path.exists():
        if not path.is_dir():
            raise GLUSError("expected a checkpoint folder, got a file", path)
        return path
    text = str(path_or_id)
    if text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise GLUSError("checkpoint folder not found", text)
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id=text, allow_patterns=list(allow_patterns) if allow_patterns else None)
    except Exception as exc:  # network errors, missing repo, offline mode: all are the user's to fix
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise GLUSError(
            f"not a local folder, and downloading it from the Hugging Face hub failed ({reason}); "
            "download it where a network exists and pass the folder", text) from None
    return Path(local)


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint folder, shards in index order; one-line error when there are none."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.exists():
            weight_map = read_json_object(index, "shard index").get("weight_map")
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise GLUSError("malformed shard index (no weight_map of file names)", index)
            files = sorted(set(weight_map.values()))
            missing = [f for f in files if not (folder / f).exists()]
            if missing:
                raise GLUSError(f"shard {missing[0]} listed in the index is missing", index)
            return [folder / f for f in files]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).exists():
            return [folder / name]
    raise GLUSError("no weights found (model.safetensors, pytorch_model.bin or a shard index)", folder)


def load_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder on the CPU, in their stored dtype."""
    state: dict[str, torch.Tensor] = {}
    for file in weight_files(folder):
        try:
            if file.suffix == ".safetensors":
                from safetensors.torch import load_file

                part = load_file(str(file))
            else:
                part = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:
            raise GLUSError(f"cannot read weights ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})",
                            file) from None
        if not isinstance(part, Mapping):
            raise GLUSError("weights file does not hold a state dict", file)
        if "model" in part and isinstance(part["model"], Mapping) and len(part) <= 3:
            part = part["model"]  # Meta's SAM-2 format {"model": state_dict}
        state.update(part)
    return state


def drop_non_weights(state: dict[str, torch.Tensor]) -> list[str]:
    """Remove known non-weight buffers of the released layout in place; return the removed keys."""
    dropped = non_weight_buffer_keys(state)
    for k in dropped:
        del state[k]
    return dropped


def describe_key_mismatch(missing: Iterable[str], unexpected: Iterable[str], where: str | Path,
                          shapes: Iterable[str] = ()) -> str | None:
    """One line that lists what does not fit (``None`` when everything fits)."""
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes)):
        keys = sorted(keys)
        if keys:
            shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
            parts.append(f"{len(keys)} {label} key(s): {shown}")
    return None if not parts else f"{where}: checkpoint does not match the model: " + "; ".join(parts)


def save_safetensors_atomic(state: Mapping[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
                            ) -> None:
    """Write a safetensors file atomically (a crash leaves no half-written weights)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp, safetensors_os_errors(path):
        # safetensors refuses shared storage; contiguous copies keep tied/viewed tensors apart.
        save_file({k: v.detach().contiguous() for k, v in state.items()}, str(tmp), metadata=metadata)


@contextlib.contextmanager
def safetensors_os_errors(path: str | Path) -> Iterator[None]:
    """Turn safetensors' I/O failures into the OSError they are, naming ``path``.

    Its Rust writer reports a full disk as a SafetensorError "... (os error 28)", also when transformers'
    ``save_pretrained`` writes through it: callers (and the CLI's one-line report) then treat it as any other
    refused write.
    """
    from safetensors import SafetensorError

    try:
        yield
    except SafetensorError as exc:
        code = re.search(r"os error (\d+)", str(exc))
        if code is None:
            raise
        raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from None
