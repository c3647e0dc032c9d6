"""`glus demo`: the embedded model segments the bundled clips offline and scores them; its options and errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from glus.cli import main
from glus.data.masks import read_mask_png
from glus.demo import DEMO_CLIPS, DEMO_MODEL, demo_clips


def _one_line(capsys, rc: int) -> str:
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_the_embedded_model_ships_inside_the_package() -> None:
    assert (DEMO_MODEL / "model.safetensors").stat().st_size <= 25 * 2 ** 20
    assert json.loads((DEMO_MODEL / "config.json").read_text())["format"] == "glus"
    assert (DEMO_MODEL / "training_config.yaml").is_file()  # what `glus train --config` reproduces it with
    from glus.data.benchmark import TIERS, read_tiers

    assert sorted(set(read_tiers(DEMO_CLIPS).values())) == sorted(TIERS)  # one clip per tier


@pytest.fixture(scope="module")
def motion_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The motion clip: two same-looking squares told apart only by where they go."""
    out = tmp_path_factory.mktemp("demo") / "out"
    assert main(["demo", "--clip", "test0001", "--out", str(out)]) == 0
    return out


def test_demo_segments_and_scores_a_clip(motion_run: Path, capsys) -> None:
    rows = list(csv.DictReader((motion_run / "scores.csv").open()))
    assert [r["expression"] for r in rows] == ["the red square moving up", "the red square that goes up",
                                               "the red square moving down", "the red square that goes down"]
    scores = json.loads((motion_run / "scores.json").read_text())
    assert all(float(r["J&F"]) == pytest.approx((float(r["J"]) + float(r["F"])) / 2) for r in rows)
    assert scores["tiers"]["motion"]["J&F"] == pytest.approx(np.mean([float(r["J&F"]) for r in rows]))
    # The J printed is that of the masks written, against the clip's ground truth (DAVIS J, mean over frames)
    from glus.data.formats import load_dataset

    data = load_dataset("mevis", DEMO_CLIPS)
    clip = data.videos["test0001"]
    for row in rows:
        ious = []
        for name in clip.frame_names:
            pred = read_mask_png(motion_run / "masks" / "test0001" / row["exp_id"] / f"{name}.png")
            gt = data.gt_mask("test0001", row["exp_id"], clip.frame_names.index(name)) > 0
            ious.append(1.0 if not (pred | gt).any() else (pred & gt).sum() / (pred | gt).sum())
        assert float(row["J"]) == pytest.approx(np.mean(ious), abs=1e-6)


def test_demo_draws_the_overlay(motion_run: Path) -> None:
    clip = motion_run / "test0001"
    with av.open(str(clip / "overlay.mp4")) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(decoded) == 12 and decoded[0].shape[:2] == (256, 384)  # 64 x 96 drawn 4x larger
    with Image.open(clip / "overlay.gif") as gif:
        assert gif.n_frames == 12
    assert (clip / "overlay_sheet.png").stat().st_size > 0
    leftovers = [p for p in motion_run.rglob("*") if p.name.startswith(".partial-") or p.suffix == ".tmp"]
    assert not leftovers  # no staging folder, no half-written file


def test_demo_on_your_own_clip(tmp_path: Path) -> None:
    from glus.data.benchmark import make_benchmark_video
    from glus.data.synthetic import write_frames

    made = make_benchmark_video(123, "appearance", name="mine")
    frames = tmp_path / "frames"
    write_frames(frames, made.video.frames, "jpg")
    out = tmp_path / "out"
    text = made.video.expressions[0].text
    assert main(["demo", "--video", str(frames), "-e", text, "--out", str(out)]) == 0
    assert json.loads((out / "expressions.json").read_text()) == {"0": text}
    masks = [read_mask_png(p) for p in sorted((out / "0").glob("*.png"))]
    assert len(masks) == 12 and all(m.shape == made.video.frames[0].shape[:2] for m in masks)
    assert sorted(json.loads((out / "scores.json").read_text())) == ["0"]
    assert (out / "overlay.mp4").is_file()


@pytest.mark.parametrize("argv, needle", [
    (["--clip", "nope"], "no bundled clip 'nope'; the clips are test0000"),
    (["-e", "the red square"], "-e needs --video"),
    (["--video", "somewhere"], "--video needs at least one -e expression"),
    (["--key-frame", "3"], "--key-frame: invalid choice"),
])
def test_demo_bad_input_is_one_line(tmp_path: Path, capsys, argv: list[str], needle: str) -> None:
    err = _one_line(capsys, main(["demo", "--out", str(tmp_path / "out"), *argv]))
    assert needle in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_demo_clips_are_the_benchmark_test_split(tmp_path: Path) -> None:
    """The bundled clips are test0000..test0004 of `glus data synth --seed 0` (never trained on), byte for byte."""
    from glus.data.benchmark import write_benchmark

    assert demo_clips() == [f"test{i:04d}" for i in range(5)]
    made = write_benchmark(tmp_path, (1, 1, 5), seed=0)["test"]
    files = sorted(p.relative_to(DEMO_CLIPS) for p in DEMO_CLIPS.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(made) for p in made.rglob("*") if p.is_file())
    assert all((DEMO_CLIPS / f).read_bytes() == (made / f).read_bytes() for f in files)
