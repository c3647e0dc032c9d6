"""Rebuild the packaged example split (``valid_u/``) and its predictions (``pred/``) from SA-V masks.

Source: the five manual masklets of SA-V video ``sav_000001`` (CC BY 4.0, Meta; shipped in the glus project's
``tests/fixtures/data/sav_000001``). The example keeps every 5th annotated frame (25 of 121, full 480x848 resolution)
and three expressions: masklet 1, masklet 2, and the union of masklets 0 and 3, stored as MeViS stores them
(``meta_expressions.json`` + ``mask_dict.json`` with COCO RLE, ``null`` where an object is absent).
The predictions are deterministic corruptions of the ground truth, as a segmentation model would err:
expression 0 eroded by 3 px, expression 1 shifted 6 px right and 4 px down, expression 2 missing on every
4th frame. Usage: ``python make_example.py SAV_DIR [OUT_DIR]`` (OUT_DIR defaults to this folder).
"""

import json
import sys
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as cocomask

VIDEO = "sav_000001"
STEP = 5
TARGETS = {"0": [1], "1": [2], "2": [0, 3]}
TEXT = {"0": "SA-V masklet 1", "1": "SA-V masklet 2", "2": "SA-V masklets 0 and 3"}


def main() -> None:
    sav = Path(sys.argv[1])
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else Path(__file__).resolve().parent
    data = json.loads((sav / f"{VIDEO}_manual.json").read_text())
    masklet = data["masklet"]
    keep = list(range(0, len(masklet), STEP))
    frames = [f"{t * 4:05d}" for t in keep]  # masklets are annotated on every 4th video frame
    objects = sorted({o for ids in TARGETS.values() for o in ids})
    mask_dict, masks = {}, {}
    for o in objects:
        rles, stack = [], []
        for t in keep:
            rle = masklet[t][o]
            m = cocomask.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
            stack.append(m)
            rles.append({"size": rle["size"], "counts": rle["counts"]} if m.any() else None)
        mask_dict[str(o)] = rles
        masks[o] = np.stack(stack)
    expressions = {e: {"exp": TEXT[e], "obj_id": ids, "anno_id": ids} for e, ids in TARGETS.items()}
    split = out / "valid_u"
    split.mkdir(parents=True, exist_ok=True)
    (split / "meta_expressions.json").write_text(
        json.dumps({"videos": {VIDEO: {"expressions": expressions, "frames": frames}}}, indent=1) + "\n")
    (split / "mask_dict.json").write_text(json.dumps(mask_dict) + "\n")

    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    for e, ids in TARGETS.items():
        gt = np.any([masks[o] for o in ids], axis=0)
        folder = out / "pred" / VIDEO / e
        folder.mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(frames):
            m = gt[i].astype(np.uint8)
            if e == "0":
                m = cv2.erode(m, kernel)
            elif e == "1":
                m = np.roll(np.roll(m, 4, axis=0), 6, axis=1)
                m[:4, :] = 0
                m[:, :6] = 0
            elif i % 4 == 3:
                m = np.zeros_like(m)
            cv2.imwrite(str(folder / f"{name}.png"), m * 255)


if __name__ == "__main__":
    main()
