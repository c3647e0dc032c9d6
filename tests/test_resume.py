"""Resuming ``glus infer``: a run killed with SIGKILL and rerun ends with exactly an uninterrupted run's output.

Model: the authors' tiny checkpoint with a 128-pixel SAM-2 (see tests/test_runner.py); data: a synthetic MeViS
split of six 10-frame videos, enough work (a few seconds) for the test to see the run half done and kill it.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from glus.data.formats import load_dataset
from glus.data.masks import write_mask_png
from glus.data.synthetic import make_video, write_mevis_split
from glus.inference.runner import SUMMARY_NAME, InferSettings, read_summary, run_dataset
from glus.inference.writers import DONE_MARKER, is_expression_done

SAM_SIZE = 128
NUM_VIDEOS = 6
NUM_FRAMES = 10
KILL_TIMEOUT_S = 180



@pytest.fixture(scope="module")
def model(official_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    yaml = (official_tiny / "sam2_tiny.yaml").read_text()
    small = yaml.replace("image_size: 1024", f"image_size: {SAM_SIZE}").replace(
        "feat_sizes: [64, 64]", f"feat_sizes: [{SAM_SIZE // 16}, {SAM_SIZE // 16}]")
    path = tmp_path_factory.mktemp("sam2") / "sam2_small.yaml"
    path.write_text(small)
    return {"model": str(official_tiny), "vision_tower": str(official_tiny / "clip"), "sam2_config": str(path)}


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    videos = []
    for i in range(NUM_VIDEOS):
        video = make_video(10 + i, num_frames=NUM_FRAMES, height=64, width=96, name=f"clip{i}")
        videos.append(dataclasses.replace(video, expressions=video.expressions[:3]))
    return write_mevis_split(tmp_path_factory.mktemp("mevis"), videos)


@pytest.fixture(scope="module")
def uninterrupted(split: Path, model: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp("uninterrupted") / "pred"
    report = run_dataset(InferSettings("mevis", split, out, **model), progress=False, env={})
    assert report.status == "complete" and report.expressions_written == NUM_VIDEOS * 3
    return out


def tree(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != SUMMARY_NAME}


def expression_states(out: Path, split: Path) -> tuple[int, int, int]:
    """(done, partial = some PNGs but not done, total) over the split's expressions."""
    done = partial = total = 0
    for video in load_dataset("mevis", split).videos.values():
        for exp_id in video.expressions:
            total += 1
            exp_dir = out / video.video_id / exp_id
            if is_expression_done(exp_dir, video.frame_names):
                done += 1
            elif exp_dir.is_dir() and any(exp_dir.glob("*.png")):
                partial += 1
    return done, partial, total


def test_sigkill_then_rerun_equals_an_uninterrupted_run(split: Path, model: dict[str, str], uninterrupted: Path,
                                                         tmp_path: Path) -> None:
    out = tmp_path / "pred"
    argv = [sys.executable, "-m", "glus", "infer", "--dataset", "mevis", "--split-dir", str(split), "--out", str(out),
            "--model", model["model"], "--vision-tower", model["vision_tower"], "--sam2-config", model["sam2_config"]]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + KILL_TIMEOUT_S
        while True:
            done, partial, total = expression_states(out, split) if out.is_dir() else (0, 0, 1)
            if done and partial:  # a video finished and the next one is half written: kill it now
                proc.send_signal(signal.SIGKILL)
                break
            if proc.poll() is not None:
                pytest.fail(f"the run ended (rc {proc.returncode}) before it could be killed half way: "
                            f"{proc.stderr.read().decode(errors='replace')[-2000:]}")
            assert time.monotonic() < deadline, "the run did not get half way in time"
            time.sleep(0.01)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    done_at_kill, _, total = expression_states(out, split)
    assert 0 < done_at_kill < total
    assert read_summary(out)["shards"]["0"]["status"] == "running"  # the killed run never finished its entry

    report = run_dataset(InferSettings("mevis", split, out, **model), progress=False, env={})
    assert report.status == "complete"
    assert report.expressions_done_before == done_at_kill
    assert report.expressions_written == total - done_at_kill
    assert expression_states(out, split) == (total, 0, total)
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert tree(out) == tree(uninterrupted)  # every PNG (and marker) byte for byte
    summary = read_summary(out)
    assert summary["totals"]["complete"] and summary["shards"]["0"]["status"] == "complete"


def test_rerun_skips_done_expressions_and_redoes_partial_ones(split: Path, model: dict[str, str], uninterrupted: Path,
                                                              tmp_path: Path) -> None:
    out = tmp_path / "pred"
    shutil.copytree(uninterrupted, out)
    names = load_dataset("mevis", split).videos["clip1"].frame_names

    # clip1/0: interrupted mid-write: no marker, a truncated PNG, a temp file, a PNG of a frame that is not there.
    (out / "clip1" / "0" / DONE_MARKER).unlink()
    (out / "clip1" / "0" / f"{names[2]}.png").write_bytes(b"\x89PNG truncated")
    (out / "clip1" / "0" / f".{names[3]}.png.x1y2.tmp").write_bytes(b"partial")
    (out / "clip1" / "0" / "99999.png").write_bytes(b"stray")
    # clip1/1: a PNG is missing although the marker exists: not done either.
    (out / "clip1" / "1" / f"{names[5]}.png").unlink()
    # clip4/2: done; changing one of its PNGs shows that the rerun leaves done expressions alone.
    changed = out / "clip4" / "2" / f"{names[0]}.png"
    write_mask_png(changed, np.zeros((64, 96), bool))
    changed_bytes = changed.read_bytes()
    assert changed_bytes != (uninterrupted / "clip4" / "2" / f"{names[0]}.png").read_bytes()

    report = run_dataset(InferSettings("mevis", split, out, **model), progress=False, env={})
    assert report.expressions_done_before == NUM_VIDEOS * 3 - 2
    assert report.expressions_written == 2 and report.frames_written == 2 * NUM_FRAMES

    got, expected = tree(out), tree(uninterrupted)
    assert got.pop(str(changed.relative_to(out))) == changed_bytes
    expected.pop(str(changed.relative_to(out)))
    assert got == expected  # clip1/0 and clip1/1 redone byte for byte; temp file and stray PNG gone
