"""``glus convert``: turn a released GLUS checkpoint into glus's own format.

The released layout (:mod:`glus.model.checkpoint`) needs two things from outside the folder to load: the CLIP
tower and the SAM-2 yaml. A converted folder holds everything (``model.safetensors``, ``config.json`` with the
full :class:`~glus.config.GLUSConfig`, the tokenizer files and ``vision_tower/``), so it loads with no further
arguments, in any process, bit-identically. The fuser ``gamma`` tensors are written with the values the chosen
``compat`` gives them (``official``: the authors' 1e-6), so the converted model computes what the released model
computes under that choice.

The output is built in a hidden temporary folder beside the destination and renamed into place only when
complete (and ``save_pretrained`` writes ``config.json``, the mark of a complete folder, last): an interrupted
conversion never leaves a destination that loads.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from glus.errors import GLUSError, ParameterError
from glus.model.checkpoint import Compat, from_pretrained, is_glus_format, parse_dtype, save_pretrained
from glus.model.checkpoint_io import resolve_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["ConvertReport", "convert_checkpoint"]

DTYPE_NAMES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


@dataclass(frozen=True)
class ConvertReport:
    """What :func:`convert_checkpoint` did.

    Attributes:
        source: the checkpoint folder read (a hub id resolves to its local snapshot).
        destination: the glus-format folder written.
        source_format: ``"released"`` (transformers 4.31 layout) or ``"glus"`` (already converted; re-saved).
        num_tensors: tensors written to ``model.safetensors`` (the CLIP tower is stored separately).
        num_parameters: numbers in those tensors.
        compat: fuser-gamma handling applied (``"official"`` or ``"stored"``).
        dtype: precision of the written weights (``fp32``, ``bf16`` or ``fp16``).
        vision_tower: where the CLIP tower came from; ``sam2_config``: the SAM-2 yaml (or the built-in Hiera-L).
    """

    source: Path
    destination: Path
    source_format: str
    num_tensors: int
    num_parameters: int
    compat: str
    dtype: str
    vision_tower: str
    sam2_config: str

    def summary(self) -> str:
        """One line for the user."""
        return (f"converted {self.source} ({self.source_format} layout) -> {self.destination}: "
                f"{self.num_tensors} tensors, {self.num_parameters:,} parameters, {self.dtype}, "
                f"fuser gamma compat={self.compat}")


def _check_destination(dst: Path, src: Path, overwrite: bool) -> None:
    if dst.resolve() == src.resolve():
        raise GLUSError("the destination is the source folder; choose a new folder", dst)
    if dst.exists():
        if not dst.is_dir():
            raise GLUSError("the destination exists and is not a folder", dst)
        if any(dst.iterdir()) and not overwrite:
            raise ParameterError("the destination folder is not empty (pass {overwrite} to replace it)", dst)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GLUSError(f"cannot create the destination's parent folder: {exc.strerror or exc}", dst.parent) from None


def _move_into_place(tmp: Path, dst: Path) -> None:
    """Rename the finished ``tmp`` folder to ``dst``, replacing an existing ``dst`` only after ``tmp`` is complete."""
    if not dst.exists():
        os.rename(tmp, dst)
        return
    old = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.old-"))
    os.rename(dst, old / dst.name)
    try:
        os.rename(tmp, dst)
    except OSError:
        os.rename(old / dst.name, dst)  # put the previous folder back
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def convert_checkpoint(src: str | Path, dst: str | Path, *, vision_tower: str | Path | None = None,
                       sam2_config: str | Path | None = None, compat: Compat | None = None,
                       dtype: str = "fp32", overwrite: bool = False) -> ConvertReport:
    """Convert the checkpoint ``src`` (released layout, local folder or hub id) to glus's format in ``dst``.

    Args:
        vision_tower: CLIP folder or id (default: the one the checkpoint's config names, looked up beside it first).
        sam2_config: Meta SAM-2 yaml (default: Hiera-L, as every GLUS release).
        compat: fuser-gamma handling, ``"official"`` (default) or ``"stored"`` (see :mod:`glus.model.checkpoint`).
        dtype: ``fp32``, ``bf16`` or ``fp16``: precision of the written weights.
        overwrite: replace a non-empty ``dst`` (only once the new folder is complete).

    Raises:
        GLUSError: missing source, tokenizer, vision tower or yaml; keys or shapes that do not match; a
            destination that exists and is not empty.
    """
    torch_dtype = parse_dtype(dtype)
    dtype_name = DTYPE_NAMES[str(torch_dtype).removeprefix("torch.")]
    folder = resolve_checkpoint(src)
    dst = Path(dst)
    _check_destination(dst, folder, overwrite)
    glus_source = is_glus_format(folder)
    if glus_source and compat == "official":
        raise ParameterError("already in glus format: its fuser gamma values are fixed, {compat} official does not "
                             "apply (convert the released checkpoint instead)", folder)
    if not (folder / "tokenizer.model").is_file():
        raise GLUSError("no tokenizer (tokenizer.model) in the checkpoint folder; a converted folder must hold one",
                        folder)
    from glus.tokenizer import GLUSTokenizer

    tokenizer = GLUSTokenizer.from_pretrained(folder)
    logger.info("loading %s", folder)
    model = from_pretrained(folder, vision_tower=vision_tower, sam2_config=sam2_config, compat=compat,
                            dtype=torch_dtype)
    state = model.state_dict()
    applied = "stored" if glus_source else (compat or "official")

    tmp: Path | None = None
    try:
        tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.partial-"))
        logger.info("writing %s", dst)
        save_pretrained(model, tmp, tokenizer, source=str(src))
        _move_into_place(tmp, dst)
    except OSError as exc:
        raise GLUSError(f"cannot write the converted checkpoint: {exc.strerror or exc}", dst) from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    tower_name = "vision_tower/ of the source" if glus_source else str(vision_tower or model.config.vision.name_or_path)
    yaml_name = "config.json of the source" if glus_source else str(sam2_config or "built-in Hiera-L")
    return ConvertReport(
        source=folder, destination=dst, source_format="glus" if glus_source else "released",
        num_tensors=len(state), num_parameters=sum(int(t.numel()) for t in state.values()),
        compat=applied, dtype=dtype_name, vision_tower=tower_name, sam2_config=yaml_name)


