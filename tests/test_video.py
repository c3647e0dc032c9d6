"""Video and frame-folder decoding (glus.data.video): selection, conversions, streaming, bad input."""

from __future__ import annotations

import gc
import os
import shutil
import struct
import weakref
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from glus.data import video as video_mod
from glus.data.video import natural_key, open_video, to_rgb_uint8
from glus.errors import GLUSError

from conftest import BEDROOM

N_FRAMES = 24
SIZE = (90, 160)  # H, W: bedroom (540x960) downscaled 6x, even so yuv420p needs no padding
FPS = 25


def _encoder() -> str:
    for name in ("libx264", "mpeg4"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - codec missing from this PyAV build
            continue
    pytest.skip("PyAV has neither libx264 nor mpeg4")


def encode(path: Path, frames: list[np.ndarray], fps: int = FPS, codec: str | None = None) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec or _encoder(), rate=fps)
        stream.height, stream.width = frames[0].shape[:2] if frames else SIZE
        stream.pix_fmt = "yuv420p"
        if stream.codec_context.name == "libx264":
            stream.options = {"crf": "12", "preset": "ultrafast"}
        else:
            stream.bit_rate = 4_000_000
        container.start_encoding()  # writes the header even when no frame follows
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    files = sorted(BEDROOM.glob("*.jpg"))[:N_FRAMES]
    assert len(files) == N_FRAMES, f"missing fixture frames in {BEDROOM}"
    out = []
    for f in files:
        with Image.open(f) as im:
            im.draft("RGB", (SIZE[1], SIZE[0]))  # JPEG DCT scaling: fast downscale
            out.append(np.asarray(im.convert("RGB").resize((SIZE[1], SIZE[0]), Image.BILINEAR)))
    return out


@pytest.fixture(scope="module")
def mp4(tmp_path_factory: pytest.TempPathFactory, frames: list[np.ndarray]) -> Path:
    return encode(tmp_path_factory.mktemp("vid") / "clip.mp4", frames)


def mean_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# ---- video files ------------------------------------------------------------------------------------------
def test_mp4_decodes_all_frames(mp4: Path, frames: list[np.ndarray]) -> None:
    with open_video(mp4) as src:
        assert src.num_frames == len(src) == N_FRAMES
        assert src.frame_names == [f"{i:05d}" for i in range(N_FRAMES)]
        assert src.size == SIZE
        assert src.fps == pytest.approx(FPS)
        decoded = list(src.iter_frames())
    assert len(decoded) == N_FRAMES
    for got, want in zip(decoded, frames):
        assert got.dtype == np.uint8 and got.shape == (*SIZE, 3)
        assert mean_abs(got, want) < 6  # lossy codec, but the same picture
    # frames are distinct, in order: each decoded frame is closest to its own source frame
    assert mean_abs(decoded[0], frames[0]) < mean_abs(decoded[0], frames[-1])


def test_mp4_start_stride_max_frames(mp4: Path) -> None:
    full = list(open_video(mp4).iter_frames())
    with open_video(mp4, start=2, stride=3, max_frames=5) as src:
        assert src.frame_names == ["00002", "00005", "00008", "00011", "00014"]
        assert src.source_indices == [2, 5, 8, 11, 14]
        assert src.fps == pytest.approx(FPS / 3)
        got = list(src)
    assert len(got) == 5
    for frame, i in zip(got, [2, 5, 8, 11, 14]):
        np.testing.assert_array_equal(frame, full[i])


def test_mp4_random_access_forward_and_backward(mp4: Path) -> None:
    full = list(open_video(mp4).iter_frames())
    with open_video(mp4) as src:
        for i in (3, 7, 7, 1, 23, 0, -1):
            np.testing.assert_array_equal(src.read(i), full[i])
        with pytest.raises(IndexError):
            src.read(N_FRAMES)


@pytest.mark.parametrize("suffix,codec", [(".mkv", None), (".avi", "mpeg4"), (".mov", None), (".webm", "libvpx")])
def test_other_containers(tmp_path: Path, frames: list[np.ndarray], suffix: str, codec: str | None) -> None:
    if codec is not None:
        try:
            av.codec.Codec(codec, "w")
        except Exception:  # noqa: BLE001
            pytest.skip(f"no {codec} encoder in this PyAV build")
    path = encode(tmp_path / f"clip{suffix}", frames[:6], codec=codec)
    with open_video(path) as src:
        assert src.num_frames == 6  # mkv/webm store no frame count: counted from packets
        got = list(src.iter_frames())
    assert len(got) == 6 and got[0].shape == (*SIZE, 3)
    assert mean_abs(got[5], frames[5]) < 10


def test_opencv_fallback_when_pyav_cannot_open(mp4: Path, frames: list[np.ndarray],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")

    monkeypatch.setattr(av, "open", refuse)
    with open_video(mp4, stride=2) as src:
        assert src.backend == "opencv"
        assert src.num_frames == N_FRAMES // 2 and src.size == SIZE
        assert src.fps == pytest.approx(FPS / 2)
        got = list(src.iter_frames())
        assert len(got) == N_FRAMES // 2
        np.testing.assert_array_equal(src.read(3), got[3])
    for frame, want in zip(got, frames[::2]):
        assert mean_abs(frame, want) < 6  # RGB (not BGR) order: a channel swap would be far off


def _assert_frames_not_retained(src) -> int:
    """Iterate, holding only weak references: every frame but the current one must have been freed."""
    refs: list[weakref.ref] = []
    for frame in src.iter_frames():
        refs.append(weakref.ref(frame))
        del frame
        gc.collect()
        alive = sum(r() is not None for r in refs[:-1])  # the suspended generator may hold the current one
        assert alive == 0, f"{alive} earlier decoded frames are still held by the source after {len(refs)} frames"
    return len(refs)


def _set_rotation(src: Path, dst: Path, matrix: tuple[int, ...]) -> Path:
    """Copy an mp4 with the track header's display matrix replaced (what phones write for portrait video)."""
    data = bytearray(src.read_bytes())
    at = data.find(b"tkhd")
    assert data[at + 4] == 0, "expected a version-0 tkhd box"
    # version/flags, creation, modification, track id, reserved, duration (6 x 4 bytes), then 16 more bytes
    start = at + 4 + 24 + 16
    assert struct.unpack(">9i", data[start:start + 36]) == (1 << 16, 0, 0, 0, 1 << 16, 0, 0, 0, 1 << 30)
    data[start:start + 36] = struct.pack(">9i", *matrix)
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("matrix,turns", [
    ((0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30), -1),  # portrait phone video: turn clockwise
    ((0, -(1 << 16), 0, 1 << 16, 0, 0, 0, 0, 1 << 30), 1),
    ((-(1 << 16), 0, 0, 0, -(1 << 16), 0, 0, 0, 1 << 30), 2),
])
def test_display_rotation_is_applied(tmp_path: Path, mp4: Path, matrix: tuple[int, ...], turns: int,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    upright = list(open_video(mp4, max_frames=3).iter_frames())
    rotated = _set_rotation(mp4, tmp_path / "rot.mp4", matrix)
    with open_video(rotated, max_frames=3) as src:
        want = np.rot90(upright[0], k=turns)
        assert src.size == want.shape[:2]
        got = list(src.iter_frames())
    assert len(got) == 3 and got[0].flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(got[2], np.rot90(upright[2], k=turns))
    # OpenCV's backend rotates the same way, so the fallback agrees on orientation
    monkeypatch.setattr(av, "open", lambda *a, **k: (_ for _ in ()).throw(av.error.InvalidDataError(1, "x")))
    with open_video(rotated, max_frames=1) as cv_src:
        assert cv_src.backend == "opencv" and cv_src.size == want.shape[:2]
        assert mean_abs(cv_src.read(0), want) < 3


def test_streaming_does_not_retain_frames(mp4: Path) -> None:
    with open_video(mp4) as src:
        assert _assert_frames_not_retained(src) == N_FRAMES


def test_folder_streams_lazily(tmp_path: Path, frames: list[np.ndarray]) -> None:
    for k in range(6):
        _save(tmp_path / f"{k:05d}.png", frames[k])
    src = open_video(tmp_path)
    assert _assert_frames_not_retained(src) == 6
    it = src.iter_frames()
    np.testing.assert_array_equal(next(it), frames[0])
    # frames are decoded when reached, not up front: a frame replaced now is the one yielded later
    _save(tmp_path / "00001.png", frames[10])
    np.testing.assert_array_equal(next(it), frames[10])


# ---- bad video files --------------------------------------------------------------------------------------
def _assert_one_line(exc: pytest.ExceptionInfo, path: Path, *words: str) -> None:
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg, msg
    for w in words:
        assert w in msg.lower(), msg


def test_corrupt_video(tmp_path: Path) -> None:
    bad = tmp_path / "noise.mp4"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    with pytest.raises(GLUSError) as exc:
        open_video(bad)
    _assert_one_line(exc, bad, "corrupt")


def test_truncated_video(tmp_path: Path, mp4: Path) -> None:
    cut = tmp_path / "cut.mp4"
    data = mp4.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(GLUSError) as exc:
        open_video(cut)
    assert str(cut) in str(exc.value) and "\n" not in str(exc.value)


def test_truncated_streamable_video_yields_what_survives(tmp_path: Path, frames: list[np.ndarray]) -> None:
    full = encode(tmp_path / "full.mkv", frames)
    cut = tmp_path / "cut.mkv"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])  # mkv needs no index at the end: the first half still plays
    with open_video(cut) as src:
        assert 0 < src.num_frames < N_FRAMES
        got = list(src.iter_frames())
    assert len(got) == src.num_frames  # frame count and decoded frames agree


def test_decoder_yielding_fewer_frames_than_counted(mp4: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    original = video_mod.VideoFileSource._decode_all

    def short(self):  # a decoder that silently drops the tail, as some damaged files do
        for index, frame in original(self):
            if index == 10:
                return
            yield index, frame

    monkeypatch.setattr(video_mod.VideoFileSource, "_decode_all", short)
    src = open_video(mp4)
    assert src.num_frames == N_FRAMES
    with pytest.raises(GLUSError) as exc:
        list(src.iter_frames())
    _assert_one_line(exc, mp4, "ends before frame 10")


def test_video_with_zero_frames(tmp_path: Path) -> None:
    empty = encode(tmp_path / "empty.avi", [], codec="mpeg4")  # avi keeps a stream header with no packets
    with pytest.raises(GLUSError) as exc:
        open_video(empty)
    _assert_one_line(exc, empty, "zero frames")


def test_file_without_video_stream(tmp_path: Path) -> None:
    path = tmp_path / "sound.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    with pytest.raises(GLUSError) as exc:
        open_video(path)
    _assert_one_line(exc, path, "no video stream")


def test_start_past_the_end(mp4: Path) -> None:
    with pytest.raises(GLUSError) as exc:
        open_video(mp4, start=N_FRAMES)
    _assert_one_line(exc, mp4, "no frames selected")


def test_missing_path_and_unsupported_extension(tmp_path: Path) -> None:
    missing = tmp_path / "nope.mp4"
    with pytest.raises(GLUSError) as exc:
        open_video(missing)
    _assert_one_line(exc, missing, "does not exist")
    odd = tmp_path / "clip.xyz"
    odd.write_bytes(b"x")
    with pytest.raises(GLUSError) as exc:
        open_video(odd)
    _assert_one_line(exc, odd, "unsupported extension")


# ---- frame folders and image lists ------------------------------------------------------------------------
def _save(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    Image.fromarray(array, mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


def test_folder_natural_order_stems_and_ignored_files(tmp_path: Path, frames: list[np.ndarray]) -> None:
    names = ["f1", "f2", "f10", "f9"]
    for k, name in enumerate(names):
        _save(tmp_path / f"{name}.png", frames[k])
    (tmp_path / "notes.txt").write_text("not a frame")
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "sub").mkdir()
    with open_video(tmp_path, fps=30) as src:
        assert src.frame_names == ["f1", "f2", "f9", "f10"]
        assert src.size == SIZE and src.fps == 30
        got = list(src.iter_frames())
        np.testing.assert_array_equal(src.read(2), frames[3])  # f9 is the 4th file written
    np.testing.assert_array_equal(got[3], frames[2])
    assert open_video(tmp_path).fps is None


def test_folder_stride_and_lossless_pixels(tmp_path: Path, frames: list[np.ndarray]) -> None:
    for k in range(12):
        _save(tmp_path / f"{k:05d}.png", frames[k])
    src = open_video(tmp_path, start=1, stride=4, max_frames=2)
    assert src.frame_names == ["00001", "00005"] and src.source_indices == [1, 5]
    got = list(src)
    np.testing.assert_array_equal(got[0], frames[1])
    np.testing.assert_array_equal(got[1], frames[5])


def test_jpeg_folder_matches_pil(tmp_path: Path) -> None:
    for f in sorted(BEDROOM.glob("*.jpg"))[:3]:
        shutil.copy(f, tmp_path / f.name)
    src = open_video(tmp_path)
    assert src.size == (540, 960)
    with Image.open(tmp_path / "00001.jpg") as im:
        np.testing.assert_array_equal(src.read(1), np.asarray(im.convert("RGB")))


def test_folder_mixed_sizes_names_file_and_sizes(tmp_path: Path) -> None:
    _save(tmp_path / "00000.png", np.zeros((20, 30, 3), np.uint8))
    _save(tmp_path / "00001.png", np.zeros((20, 30, 3), np.uint8))
    odd = _save(tmp_path / "00002.png", np.zeros((24, 30, 3), np.uint8))
    with pytest.raises(GLUSError) as exc:
        open_video(tmp_path)
    _assert_one_line(exc, odd, "24x30", "20x30", "00000.png")


def test_empty_folder_and_folder_of_non_images(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(GLUSError) as exc:
        open_video(empty)
    _assert_one_line(exc, empty, "no frame images")
    (empty / "readme.txt").write_text("x")
    with pytest.raises(GLUSError):
        open_video(empty)


def test_folder_with_unknown_file_type(tmp_path: Path) -> None:
    _save(tmp_path / "00000.png", np.zeros((8, 8, 3), np.uint8))
    tif = tmp_path / "00001.tif"
    Image.new("RGB", (8, 8)).save(tif)
    with pytest.raises(GLUSError) as exc:
        open_video(tmp_path)
    _assert_one_line(exc, tif, "not a supported frame image")


def test_folder_with_undecodable_image(tmp_path: Path) -> None:
    _save(tmp_path / "00000.png", np.zeros((8, 8, 3), np.uint8))
    bad = tmp_path / "00001.jpg"
    bad.write_bytes(b"this is not a jpeg")
    with pytest.raises(GLUSError) as exc:
        open_video(tmp_path)
    _assert_one_line(exc, bad, "cannot read image")


def test_image_list_keeps_order_and_checks_entries(tmp_path: Path, frames: list[np.ndarray]) -> None:
    a = _save(tmp_path / "b.png", frames[0])
    b = _save(tmp_path / "a.png", frames[1])
    src = open_video([a, str(b)])
    assert src.frame_names == ["b", "a"]
    np.testing.assert_array_equal(list(src)[1], frames[1])
    single = open_video(a)
    assert single.num_frames == 1 and single.frame_names == ["b"]
    missing = tmp_path / "c.png"
    with pytest.raises(GLUSError) as exc:
        open_video([a, missing])
    _assert_one_line(exc, missing, "does not exist")
    (tmp_path / "d").mkdir()
    dup = _save(tmp_path / "d" / "a.png", frames[2])
    with pytest.raises(GLUSError) as exc:
        open_video([b, dup])
    _assert_one_line(exc, dup, "share the name")
    with pytest.raises(GLUSError):
        open_video([])


# ---- pixel conversions --------------------------------------------------------------------------------------
def test_grayscale_to_rgb(tmp_path: Path) -> None:
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    frame = open_video(_save(tmp_path / "g.png", gray)).read(0)
    assert frame.shape == (8, 8, 3)
    for c in range(3):
        np.testing.assert_array_equal(frame[:, :, c], gray)


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    rgba = np.random.default_rng(1).integers(0, 256, (8, 8, 4), dtype=np.uint8)
    rgba[..., 3] = 0  # fully transparent: colours are still kept as stored (no compositing)
    frame = open_video(_save(tmp_path / "a.png", rgba, "RGBA")).read(0)
    np.testing.assert_array_equal(frame, rgba[..., :3])


def test_16bit_scaled_to_8bit(tmp_path: Path) -> None:
    values = np.array([[0, 257, 65535, 257 * 100], [128, 129, 32896, 65280]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)  # mode I;16
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    frame = open_video(path).read(0)
    assert frame.dtype == np.uint8
    np.testing.assert_array_equal(frame[..., 0], [[0, 1, 255, 100], [0, 1, 128, 254]])
    np.testing.assert_array_equal(frame[..., 0], frame[..., 2])


def test_palette_and_bilevel_to_rgb(tmp_path: Path) -> None:
    index = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    im = Image.fromarray(index, "P")
    im.putpalette([10, 20, 30, 200, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    im.save(tmp_path / "p.png")
    frame = open_video(tmp_path / "p.png").read(0)
    np.testing.assert_array_equal(frame[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(frame[0, 1], [200, 0, 0])
    np.testing.assert_array_equal(frame[1, 0], [0, 255, 0])
    bilevel = Image.fromarray(np.array([[0, 255]], dtype=np.uint8)).convert("1")
    np.testing.assert_array_equal(to_rgb_uint8(bilevel), [[[0, 0, 0], [255, 255, 255]]])


def test_natural_key() -> None:
    names = ["img10.png", "img2.png", "img1.png", "img01.png", "a.png"]
    assert sorted(names, key=natural_key) == ["a.png", "img01.png", "img1.png", "img2.png", "img10.png"]


def test_data_layer_does_not_import_torch() -> None:
    source = Path(video_mod.__file__).read_text()
    assert "import torch" not in source and os.path.basename(video_mod.__file__) == "video.py"
