"""Bad input through the real command line: one line naming the option or file, exit status 2, nothing
half-written: issue 13's corpus (numeric options, devices, expressions, outputs the machine refuses: a
read-only file system, a full disk). The bad videos and dataset files are in ``test_segment_e2e`` and
``test_runner``."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest
import torch

from glus.cli import main
from glus.eval.example import example_dir

EXAMPLE = example_dir()
PROGRESS_BAR = re.compile(r"\d+%\|.*\|")  # a tqdm bar drawn before the failure (loading, forward)


def _one_line(capsys, rc: int) -> str:
    """The error line of a refused command: exit status 2 and, progress bars aside, exactly one line on stderr."""
    assert rc == 2
    err = capsys.readouterr().err
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip() and not PROGRESS_BAR.search(line)]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


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


# ---- a disk that fills up or refuses writes, through the real write layer -------------------------------------
def fill_disk_after(monkeypatch, writes: int) -> None:
    """From the ``writes``-th file on, every write fails as on a full disk: half the bytes land in the (temporary)
    file, then ENOSPC, as a real file system does when it runs out mid-write. Every glus writer goes through
    ``Path.write_bytes`` (:func:`glus.fileio.atomic_write_bytes`)."""
    real, done = Path.write_bytes, [0]

    def write_bytes(self: Path, data) -> int:
        if done[0] >= writes:
            real(self, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        done[0] += 1
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _tiny_model(official_tiny: Path) -> list[str]:
    return ["--model", str(official_tiny), "--vision-tower", str(official_tiny / "clip"),
            "--sam2-config", str(official_tiny / "sam2_tiny.yaml")]


@pytest.mark.parametrize("where", ["pngs", "overlay"])
def test_segment_full_disk_keeps_the_folder_as_it_was(official_tiny: Path, tmp_path: Path, capsys, monkeypatch,
                                                      where: str) -> None:
    args = _segment(tmp_path, *_tiny_model(official_tiny))
    out = tmp_path / "out"
    assert main(args) == 0  # an earlier, complete result
    capsys.readouterr()
    before = _tree(out)
    if where == "pngs":
        fill_disk_after(monkeypatch, writes=2)
    else:  # FFmpeg writes the video itself: its muxer reports the full disk
        import av

        real_open = av.open

        class FullDisk:
            def __init__(self, container) -> None:
                self.container = container

            def __getattr__(self, name: str):
                return getattr(self.container, name)

            def mux(self, packet) -> None:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.container.name)

        monkeypatch.setattr(av, "open", lambda *a, **k: FullDisk(real_open(*a, **k)))
    err = _one_line(capsys, main([*args[:3], "the blue square", *args[4:]]))
    assert "No space left on device" in err
    assert _tree(out) == before  # old masks, expressions.json and overlay untouched; no staging folder, no .tmp
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in out.iterdir() if not p.name.startswith("."))


@pytest.mark.parametrize("command", ["evaluate", "submit"])
@pytest.mark.parametrize("code, words", [(errno.EROFS, "Read-only file system"),
                                         (errno.ENOSPC, "No space left on device")])
def test_refused_report_write_is_one_line_and_leaves_nothing(tmp_path: Path, capsys, monkeypatch, command: str,
                                                             code: int, words: str) -> None:
    import glus.fileio as fileio

    def refuse(src, dst):
        raise OSError(code, os.strerror(code), str(dst))

    monkeypatch.setattr(fileio.os, "replace", refuse)
    out = tmp_path / "result" / ("r.json" if command == "evaluate" else "r.zip")
    split = ["--dataset", "mevis", "--split-dir", str(EXAMPLE / "valid_u")]
    argv = ([command, *split, "--pred", str(EXAMPLE / "pred"), "--output", str(out)] if command == "evaluate"
            else [command, *split, str(EXAMPLE / "pred"), str(out)])
    err = _one_line(capsys, main(argv))
    assert words in err and "r." in err
    assert not [p for p in out.parent.rglob("*") if p.is_file()]  # no report, no temporary file


def _convert(official_tiny: Path, dst: Path) -> list[str]:
    return ["convert", str(official_tiny), str(dst), "--vision-tower", str(official_tiny / "clip"),
            "--sam2-config", str(official_tiny / "sam2_tiny.yaml")]


def test_convert_full_disk_is_one_line_and_leaves_nothing(official_tiny: Path, tmp_path: Path, capsys,
                                                          monkeypatch) -> None:
    import safetensors.torch
    from safetensors import SafetensorError

    def full(tensors, filename, metadata=None):  # what safetensors' Rust writer raises when the disk fills up
        Path(filename).write_bytes(b"\0" * 100)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    dst = tmp_path / "converted"
    err = _one_line(capsys, main(_convert(official_tiny, dst)))
    assert "No space left on device" in err and "converted" in err
    assert list(tmp_path.iterdir()) == []  # no destination, no partial folder


def test_convert_read_only_destination(official_tiny: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    import glus.model.convert as convert

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(kwargs.get("dir")))

    monkeypatch.setattr(convert.tempfile, "mkdtemp", read_only)
    err = _one_line(capsys, main(_convert(official_tiny, tmp_path / "converted")))
    assert "Read-only file system" in err and "converted" in err
    assert list(tmp_path.iterdir()) == []
