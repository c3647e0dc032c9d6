"""Dataset readers, one module per format, behind :func:`load_dataset`.

=============  =====================================================  ==========================================
name           ``split_dir``                                          ground truth
=============  =====================================================  ==========================================
``mevis``      the split folder (``mevis/valid_u``), or the root      ``mask_dict.json`` (train, valid_u)
               plus ``split``
``refytvos``   the dataset root plus ``split``, or the split folder   ``Annotations/`` palette PNGs or
                                                                      ``mask_dict.pkl`` (train); valid: none
``davis17``    as ``refytvos``                                        ``mask_dict.pkl`` or ``Annotations/``
``revos``      the ReVOS folder (``split`` defaults to ``valid``)     ``mask_dict.json`` (+ foreground)
``lvvis``      the folder of ``<split>_instances.json`` or of the     segmentations / ``mask_dict.json``
               VISA copy's ``meta_expressions.json``
``reasonvos``  the ReasonVOS folder                                   ``Annotations/<src>_<vid>_<obj>/`` PNGs
=============  =====================================================  ==========================================

Every reader checks the annotation files when it loads them (structure, unknown annotation ids, mask lists of
the wrong length, missing frame lists) and raises :class:`~glus.errors.GLUSError` naming the file and entry;
masks themselves are decoded only when asked for.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from glus.errors import GLUSError

if TYPE_CHECKING:  # the readers import it; the names alone (the command line's choices) stay light
    from glus.data.records import Dataset

__all__ = ["DATASET_NAMES", "load_dataset"]

DATASET_NAMES = ("mevis", "refytvos", "davis17", "revos", "lvvis", "reasonvos")


def _reader(name: str) -> Callable[..., Dataset]:
    # Imported on demand so that loading one format does not import the others.
    if name == "mevis":
        from glus.data.formats.mevis import read_mevis as reader
    elif name == "refytvos":
        from glus.data.formats.referformer import read_refytvos as reader
    elif name == "davis17":
        from glus.data.formats.referformer import read_davis17 as reader
    elif name == "revos":
        from glus.data.formats.revos import read_revos as reader
    elif name == "lvvis":
        from glus.data.formats.lvvis import read_lvvis as reader
    elif name == "reasonvos":
        from glus.data.formats.reasonvos import read_reasonvos as reader
    else:
        raise GLUSError(f"unknown dataset '{name}' (choose from {', '.join(DATASET_NAMES)})")
    return reader


def load_dataset(name: str, split_dir: str | Path, split: str | None = None, **options: Any) -> Dataset:
    """Read one split of a dataset in its official layout.

    Args:
        name: one of :data:`DATASET_NAMES`.
        split_dir: the folder the split's annotation files are in (see the table in the module doc).
        split: the split name where the folder does not imply it (``valid_u``, ``train``, ...).
        options: format-specific options: ``refytvos`` / ``davis17`` take ``masks`` (``"auto"``, ``"pkl"``,
            ``"png"``), ``refytvos`` also ``test_meta`` and ``keep_test_videos``.

    Returns:
        the :class:`~glus.data.records.Dataset` (a subclass per format).
    """
    reader = _reader(name)
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise GLUSError("dataset folder not found", split_dir)
    try:
        inspect.signature(reader).bind(split_dir, split, **options)
    except TypeError:
        raise GLUSError(f"the {name} reader does not take the option(s) {', '.join(map(repr, options))}") from None
    return reader(split_dir, split, **options)
