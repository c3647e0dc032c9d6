"""Bad input through the real command line: one line naming the option or file, exit status 2, nothing
half-written. The start of issue 13's corpus: the rows fixed so far (numbers, devices, outputs the machine
refuses)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from glus.cli import main
from glus.eval.example import example_dir

EXAMPLE = example_dir()


def _one_line(capsys, rc: int) -> str:
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def _segment(tmp_path: Path, *extra: str) -> list[str]:
    video = tmp_path / "frames"
    if not video.exists():
        from glus.data.synthetic import make_video, write_frames

        write_frames(video, make_video(0, num_frames=3, height=32, width=48).frames, "png")
    return ["segment", str(video), "-e", "the red circle", "--out", str(tmp_path / "out"), "--model",
            str(tmp_path / "no-model"), *extra]


@pytest.mark.parametrize("value", ["0", "-1"])
def test_segment_max_batch_is_checked_before_anything(tmp_path: Path, capsys, value: str) -> None:
    err = _one_line(capsys, main(_segment(tmp_path, "--max-batch", value)))
    assert "--max-batch must be >= 1" in err and not (tmp_path / "out").exists()


def test_segment_unknown_device(tmp_path: Path, capsys) -> None:
    err = _one_line(capsys, main(_segment(tmp_path, "--device", "gpu0")))
    assert "unknown device 'gpu0'" in err and not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_segment_cuda_absent(tmp_path: Path, capsys) -> None:
    err = _one_line(capsys, main(_segment(tmp_path, "--device", "cuda")))
    assert "no CUDA device" in err and not (tmp_path / "out").exists()


def test_submit_output_under_a_regular_file(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "passwd"
    blocker.write_text("not a folder")
    err = _one_line(capsys, main(["submit", "--dataset", "mevis", "--split-dir", str(EXAMPLE / "valid_u"),
                                  str(EXAMPLE / "pred"), str(blocker / "out.zip")]))
    assert "passwd" in err
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize("code, words", [(errno.EROFS, "Read-only file system"),
                                         (errno.ENOSPC, "No space left on device")])
def test_evaluate_refused_write_is_one_line_and_leaves_nothing(tmp_path: Path, capsys, monkeypatch, code: int,
                                                               words: str) -> None:
    import glus.fileio as fileio

    def refuse(src, dst):
        raise OSError(code, os.strerror(code), str(dst))

    monkeypatch.setattr(fileio.os, "replace", refuse)
    out = tmp_path / "result" / "r.json"
    err = _one_line(capsys, main(["evaluate", "--dataset", "mevis", "--split-dir", str(EXAMPLE / "valid_u"),
                                  "--pred", str(EXAMPLE / "pred"), "--output", str(out)]))
    assert words in err and "r." in err
    assert not [p for p in out.parent.rglob("*") if p.is_file()]  # no report, no temporary file
