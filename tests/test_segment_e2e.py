"""End to end on real frames: `glus segment` on an mp4 made from the bedroom frames (tests/fixtures), and its bad-input errors."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
from PIL import Image

from glus.cli import main
from glus.data.masks import read_mask_png
from glus.data.synthetic import encode_mp4

from conftest import BEDROOM


@pytest.fixture(scope="module")
def bedroom_mp4(tmp_path_factory):
    files = sorted(BEDROOM.glob("*.jpg"))[:12]
    frames = np.stack([np.asarray(Image.open(f).convert("RGB").resize((320, 180))) for f in files])
    return encode_mp4(tmp_path_factory.mktemp("video") / "bedroom.mp4", frames, fps=10)


def _model_args(official_tiny):
    return ["--model", str(official_tiny), "--vision-tower", str(official_tiny / "clip"),
            "--sam2-config", str(official_tiny / "sam2_tiny.yaml")]


def test_segment_mp4_end_to_end(official_tiny, bedroom_mp4, tmp_path):
    out = tmp_path / "out"
    rc = main(["segment", str(bedroom_mp4), "-e", "the bed", "-e", "the lamp on the left", "--out", str(out),
               "--key-frame", "auto", "--stride", "2", "--max-frames", "5", *_model_args(official_tiny)])
    assert rc == 0
    names = [f"{i:05d}" for i in range(0, 10, 2)]  # source frame indices under --stride 2
    for i in range(2):
        pngs = sorted(p.stem for p in (out / str(i)).glob("*.png"))
        assert pngs == names
        masks = [read_mask_png(out / str(i) / f"{n}.png") for n in names]
        assert all(m.shape == (180, 320) for m in masks)
        assert any(m.any() for m in masks)  # the rigged model always says [SEG]; SAM-2 draws something
    assert json.loads((out / "expressions.json").read_text()) == {"0": "the bed", "1": "the lamp on the left"}
    scores = json.loads((out / "scores.json").read_text())
    for entry in scores.values():  # key-frame selection ran: its first pass and the frame it chose
        assert entry["key_frame_mode"] == "auto" and len(entry["scores"]) == len(entry["first_pass_scores"]) == 5
        first = entry["first_pass_scores"]
        assert entry["key_frame"] == first.index(max(first))
    with av.open(str(out / "overlay.mp4")) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 5 and decoded[0].shape[:2] == (180, 320)
    assert (out / "overlay.gif").exists() and (out / "overlay_sheet.png").exists()
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize("case,needle", [
    ("corrupt", "corrupt"), ("empty_expression", "empty"), ("key_frame", "--key-frame"),
    ("missing", "not"), ("empty_folder", "no"),
    # A shell hands undecodable bytes to Python as lone surrogates; no tokenizer can encode them.
    ("surrogate", "not valid utf-8 text: character 5 is an undecodable byte 0xff"),
    ("image_token", "contains '<image>', one of the model's own prompt tokens"),
    ("seg_token", "contains '[seg]', one of the model's own prompt tokens"),
])
def test_segment_bad_input_is_one_line(official_tiny, tmp_path, capsys, case, needle):
    video = tmp_path / "video.mp4"
    expression = "the bed"
    extra: list[str] = []
    if case == "corrupt":
        video.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif case == "missing":
        video = tmp_path / "nope.mp4"
    elif case == "empty_folder":
        video = tmp_path / "frames"
        video.mkdir()
    else:
        encode_mp4(video, np.zeros((3, 16, 16, 3), np.uint8))
        if case == "empty_expression":
            expression = "   "
        elif case == "surrogate":
            expression = "the b\udcffed"
        elif case == "image_token":
            expression = "the bed in <image>"
        elif case == "seg_token":
            expression = "the bed [SEG]"
        else:
            extra = ["--key-frame", "7"]
    rc = main(["segment", str(video), "-e", expression, "--out", str(tmp_path / "out"), *extra,
               *_model_args(official_tiny)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and needle in err.lower() and "Traceback" not in err
    assert not (tmp_path / "out" / "0").exists()  # nothing written


def test_tabs_and_newlines_are_words(official_tiny, tmp_path):
    """Control characters are text to the tokenizer (as in the authors' code): segmented, and kept verbatim."""
    video = encode_mp4(tmp_path / "v.mp4", np.zeros((3, 32, 32, 3), np.uint8))
    out = tmp_path / "out"
    expressions = ["the bed\tby the window", "the lamp\non the left"]
    rc = main(["segment", str(video), *[a for e in expressions for a in ("-e", e)], "--out", str(out),
               "--no-overlay", *_model_args(official_tiny)])
    assert rc == 0
    assert json.loads((out / "expressions.json").read_text()) == {"0": expressions[0], "1": expressions[1]}
    assert all(len(list((out / str(i)).glob("*.png"))) == 3 for i in range(2))


def test_quantized_loading_needs_cuda(official_tiny, tmp_path, capsys):
    video = encode_mp4(tmp_path / "v.mp4", np.zeros((2, 16, 16, 3), np.uint8))
    rc = main(["segment", str(video), "-e", "the bed", "--out", str(tmp_path / "out"), "--load-in", "4",
               "--device", "cpu", *_model_args(official_tiny)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "CUDA" in err
