"""`glus app` in a real headless Chromium (Debian's, driven by Playwright): upload, expressions, run, the overlay
plays, and the masks downloaded are those `glus segment` writes for the same input. Needs the app extra
(`pip install -e '.[app]'`) and a system Chromium, both of which `.ci/run` installs."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glus.cli import main
from glus.data.masks import read_mask_png
from glus.data.synthetic import encode_mp4
from glus.demo import DEMO_CLIPS, DEMO_MODEL
from glus.errors import GLUSError

pytest.importorskip("gradio")
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ROOT = Path(__file__).resolve().parent.parent
EXPRESSIONS = ["the red square moving up", "the red square moving down"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def clip_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled motion clip as the mp4 a user would upload."""
    frames = sorted((DEMO_CLIPS / "JPEGImages" / "test0001").glob("*.jpg"))
    video = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in frames])
    return encode_mp4(tmp_path_factory.mktemp("clip") / "clip.mp4", video, fps=4)


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory):
    port = _free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONPATH": str(ROOT / "src")}
    log = (tmp_path_factory.mktemp("app") / "app.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "glus", "app", "--port", str(port)], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while True:
        assert proc.poll() is None, Path(log.name).read_text()
        try:
            with urllib.request.urlopen(url, timeout=2):
                break
        except OSError:
            assert time.time() < deadline, "glus app did not start in 120 s"
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def page(app_url: str):
    if CHROMIUM is None:
        pytest.skip("no system chromium (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(accept_downloads=True, viewport={"width": 1280, "height": 1400})
        page.goto(app_url)
        yield page
        browser.close()


def test_upload_run_play_and_download_equal_glus_segment(page, clip_mp4: Path, tmp_path: Path) -> None:
    page.locator("input[type=file]").first.set_input_files(str(clip_mp4))
    page.locator("video").first.wait_for(timeout=30_000)  # the upload is in: its preview shows
    page.get_by_label("expressions").fill("\n".join(EXPRESSIONS))
    page.get_by_role("button", name="Segment").click()
    page.locator("#status").get_by_text("Done").wait_for(timeout=90_000)
    assert "2 expression(s) on 12 frames" in page.locator("#status").inner_text()
    assert "expression 0: frame" in page.locator("#key-frames").inner_text()

    overlay = page.locator("#overlay video")
    overlay.wait_for(timeout=30_000)
    played = overlay.evaluate("""v => new Promise(done => {
        v.muted = true;
        v.play().then(() => setTimeout(() => done([v.readyState, v.currentTime, v.videoWidth, v.error]), 800),
                      e => done([v.readyState, -1, v.videoWidth, String(e)]));
    })""")
    assert played[0] >= 2 and played[1] > 0 and played[2] == 96 and played[3] is None, played  # it decodes & plays
    if os.environ.get("GLUS_APP_SCREENSHOT"):  # docs/app.png is made this way
        page.screenshot(path=os.environ["GLUS_APP_SCREENSHOT"], full_page=True)

    with page.expect_download() as info:
        page.locator('#downloads a[download="masks.zip"]').click()
    archive = zipfile.ZipFile(io.BytesIO(Path(info.value.path()).read_bytes()))
    out = tmp_path / "segment"
    argv = ["segment", str(clip_mp4), *[a for e in EXPRESSIONS for a in ("-e", e)], "--key-frame", "auto",
            "--model", str(DEMO_MODEL), "--out", str(out), "--no-overlay"]
    assert main(argv) == 0
    pngs = sorted(p.relative_to(out).as_posix() for p in out.glob("*/*.png"))
    assert len(pngs) == 24 and sorted(n for n in archive.namelist() if n.endswith(".png")) == pngs
    for name in pngs:
        mine = np.asarray(Image.open(io.BytesIO(archive.read(name))))
        assert np.array_equal(mine > 0, read_mask_png(out / name)), name


def test_a_run_without_expressions_is_one_line_in_the_page(page) -> None:
    page.get_by_label("expressions").fill("   ")
    page.get_by_role("button", name="Segment").click()
    status = page.locator("#status")
    status.get_by_text("Error").wait_for(timeout=30_000)
    text = status.inner_text().strip()
    assert text == "Error: type at least one expression (one per line)" and "Traceback" not in page.content()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory):
    from glus.app import SegmentService

    return SegmentService(work_dir=tmp_path_factory.mktemp("runs"), max_frames=5)


def test_runs_are_kept_apart_and_long_videos_strided(service, clip_mp4: Path) -> None:
    first = service.run(str(clip_mp4), EXPRESSIONS[:1])
    second = service.run(str(clip_mp4), EXPRESSIONS[1:])
    assert first.folder != second.folder and first.folder.parent == second.folder.parent
    assert "The video has 12 frames: every 3-th was segmented (4 frames)." in first.message
    names = sorted(n for n in zipfile.ZipFile(first.masks).namelist() if n.endswith(".png"))
    assert names == [f"0/{i:05d}.png" for i in (0, 3, 6, 9)]
    assert first.plot.stat().st_size > 0 and first.rle.is_file() and first.overlay.is_file()


@pytest.mark.parametrize("case, needle", [("corrupt", "clip.mp4"), ("none", "upload a video"),
                                          ("blank", "at least one expression")])
def test_bad_requests_are_one_line(service, tmp_path: Path, case: str, needle: str) -> None:
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not a video at all")
    before = set(service.work_dir.iterdir())
    with pytest.raises(GLUSError) as err:
        service.run(None if case == "none" else str(video), ["  "] if case == "blank" else EXPRESSIONS)
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert set(service.work_dir.iterdir()) == before  # a refused request leaves nothing behind
