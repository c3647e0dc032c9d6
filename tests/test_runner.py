"""``glus infer`` (glus.inference.runner): layout read by ``glus evaluate``, sharding, key frames, input errors.

The model is the authors' tiny checkpoint (tests/fixtures/reference/official_tiny; its rigged ``lm_head`` always
says ``[SEG]``, so masks are non-trivial) with its SAM-2 yaml at a 128-pixel input instead of 1024, which
makes a frame cost milliseconds on CPU. The data are synthetic MeViS splits.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glus.cli import main as cli_main
from glus.data.formats import load_dataset
from glus.data.synthetic import make_video, write_mevis_split
from glus.data.video import open_video
from glus.errors import GLUSError
from glus.inference.frames import FrameStore
from glus.inference.pipeline import GLUSPipeline
from glus.distributed import Shard, assign_shards, resolve_device, resolve_shard
from glus.inference.runner import (SUMMARY_NAME, InferSettings, expression_frames, plan_key_frames, read_summary,
                                   run_dataset)
from glus.inference.writers import DONE_MARKER

SAM_SIZE = 128



@pytest.fixture(scope="module")
def model_args(official_tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``--model/--vision-tower/--sam2-config`` of the official tiny checkpoint with a 128-pixel SAM-2."""
    yaml = (official_tiny / "sam2_tiny.yaml").read_text()
    small = yaml.replace("image_size: 1024", f"image_size: {SAM_SIZE}").replace(
        "feat_sizes: [64, 64]", f"feat_sizes: [{SAM_SIZE // 16}, {SAM_SIZE // 16}]")
    assert small.count(f"[{SAM_SIZE // 16}, {SAM_SIZE // 16}]") == 2 and f"image_size: {SAM_SIZE}" in small
    path = tmp_path_factory.mktemp("sam2") / "sam2_small.yaml"
    path.write_text(small)
    return ["--model", str(official_tiny), "--vision-tower", str(official_tiny / "clip"), "--sam2-config", str(path)]


def _videos(count: int, frames: int, expressions: int = 3) -> list:
    out = []
    for i in range(count):
        video = make_video(i, num_frames=frames, height=64, width=96, name=f"vid{i}")
        out.append(dataclasses.replace(video, expressions=video.expressions[:expressions]))
    return out


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three videos of 6, 7 and 8 frames (uneven work for the shard balancer), three expressions each."""
    root = tmp_path_factory.mktemp("mevis")
    videos = [make_video(i, num_frames=6 + i, height=64, width=96, name=f"vid{i}") for i in range(3)]
    return write_mevis_split(root, [dataclasses.replace(v, expressions=v.expressions[:3]) for v in videos])


def infer(split_dir: Path, out: Path, model_args: list[str], *extra: str) -> int:
    return cli_main(["infer", "--dataset", "mevis", "--split-dir", str(split_dir), "--out", str(out),
                     *model_args, *extra])


def tree(out: Path) -> dict[str, bytes]:
    """Every file of the prediction layout (not the run summary) -> its bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != SUMMARY_NAME}


@pytest.fixture(scope="module")
def single_run(split: Path, model_args: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single") / "pred"
    assert infer(split, out, model_args) == 0
    return out


# ---------------------------------------------------------------------------------------------- layout + evaluate
def test_layout_is_what_evaluate_reads(split: Path, single_run: Path, tmp_path: Path) -> None:
    dataset = load_dataset("mevis", split)
    fractions = []
    for video in dataset.videos.values():
        for exp_id in video.expressions:
            exp_dir = single_run / video.video_id / exp_id
            assert sorted(p.name for p in exp_dir.iterdir()) == sorted(
                [f"{n}.png" for n in video.frame_names] + [DONE_MARKER])
            for name in video.frame_names:
                with Image.open(exp_dir / f"{name}.png") as im:
                    assert im.mode == "L" and im.size == (96, 64)
                    pixels = np.asarray(im)
                assert set(np.unique(pixels)) <= {0, 255}
                fractions.append((pixels > 0).mean())
    assert 0 < np.mean(fractions) < 1 and max(fractions) > 0  # real masks, not blank or full frames

    result_path = tmp_path / "result.json"
    assert cli_main(["evaluate", "--dataset", "mevis", "--split-dir", str(split), "--pred", str(single_run),
                     "--output", str(result_path)]) == 0
    result = json.loads(result_path.read_text())
    assert result["missing"] == {} and result["num_scored"] == result["num_expressions"] == 9

    summary = read_summary(single_run)
    assert summary["settings"]["dataset"] == "mevis" and summary["settings"]["key_frame"] == "none"
    assert summary["totals"] == {"videos": 3, "expressions": 9, "expression_frames": 3 * (6 + 7 + 8),
                                 "expressions_done_before": 0, "expressions_written": 9,
                                 "frames_written": 3 * (6 + 7 + 8), "shards_complete": 1, "complete": True}
    shard = summary["shards"]["0"]
    assert shard["status"] == "complete" and shard["seconds"] >= shard["model_load_seconds"] > 0
    assert not list(single_run.rglob("*.tmp"))


# ---------------------------------------------------------------------------------------------- sharding
def test_two_shards_give_the_single_run_byte_for_byte(split: Path, single_run: Path, model_args: list[str],
                                                      tmp_path: Path) -> None:
    out = tmp_path / "pred"
    assert infer(split, out, model_args, "--num-shards", "2", "--shard-index", "0") == 0
    first = {p.name for p in out.iterdir() if p.is_dir()}
    assert first and first < {"vid0", "vid1", "vid2"}
    summary = read_summary(out)
    assert summary["totals"]["complete"] is False and summary["totals"]["shards_complete"] == 1

    assert infer(split, out, model_args, "--num-shards", "2", "--shard-index", "1") == 0
    second = {p.name for p in out.iterdir() if p.is_dir()} - first
    assert second and first.isdisjoint(second) and first | second == {"vid0", "vid1", "vid2"}
    assert tree(out) == tree(single_run)
    summary = read_summary(out)
    assert summary["totals"]["complete"] is True and set(summary["shards"]) == {"0", "1"}
    assert summary["totals"]["expressions_written"] == 9
    # The heaviest video (vid2: 3 x 8 expression-frames) is alone; the other two share the second shard.
    assert sorted([first, second], key=len) == [{"vid2"}, {"vid0", "vid1"}]


def test_torchrun_environment_picks_the_shard(split: Path, model_args: list[str], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    out = tmp_path / "pred"
    assert infer(split, out, model_args, "--device", "cpu") == 0
    assert {p.name for p in out.iterdir() if p.is_dir()} == {"vid0", "vid1"}
    assert read_summary(out)["shards"]["1"]["num_shards"] == 2


def test_assign_shards_is_balanced_deterministic_and_complete() -> None:
    rng = np.random.default_rng(0)
    weights = {f"v{i:03d}": int(w) for i, w in enumerate(rng.integers(1, 500, size=101))}
    for n in (1, 2, 3, 8, 200):
        shards = assign_shards(weights, n)
        assert shards == assign_shards(dict(weights), n)  # same input, same division
        flat = [v for s in shards for v in s]
        assert sorted(flat) == sorted(weights) and len(flat) == len(weights)
        order = list(weights)
        assert all(s == sorted(s, key=order.index) for s in shards)  # dataset order within a shard
        loads = [sum(weights[v] for v in s) for s in shards]
        if n <= len(weights):
            # Longest-first greedy: no shard exceeds another by more than the largest single video.
            assert max(loads) - min(loads) <= max(weights.values())
    # a(5) -> 0, b(3) -> 1, c(2) -> 1 (3 < 5), d(2): loads tie at 5 -> the lower shard.
    assert assign_shards({"a": 5, "b": 3, "c": 2, "d": 2}, 2) == [["a", "d"], ["b", "c"]]
    assert assign_shards({"b": 1, "a": 1}, 2) == [["a"], ["b"]]  # ties: lower video id to the lower shard
    assert assign_shards({}, 2) == [[], []]
    with pytest.raises(ValueError):
        assign_shards(weights, 0)


def test_expression_frames_weight(split: Path) -> None:
    videos = load_dataset("mevis", split).videos
    assert [expression_frames(v) for v in videos.values()] == [18, 21, 24]


def test_resolve_shard_from_flags_and_torchrun() -> None:
    assert resolve_shard(env={}) == Shard(0, 1)
    assert resolve_shard(4, 3, env={}) == Shard(3, 4)
    assert resolve_shard(env={"RANK": "2", "WORLD_SIZE": "4", "LOCAL_RANK": "0"}) == Shard(2, 4)
    # Array job 1 of 3, each running torchrun over 2 GPUs: shards nest.
    assert resolve_shard(3, 1, env={"RANK": "1", "WORLD_SIZE": "2"}) == Shard(3, 6)
    for flags, env, message in [((2, None), {}, "go together"), ((None, 0), {}, "go together"),
                                ((2, 2), {}, "shard.index must be in 0..1"), ((0, 0), {}, "num.shards >= 1"),
                                ((None, None), {"RANK": "3", "WORLD_SIZE": "2"}, "inconsistent"),
                                ((None, None), {"WORLD_SIZE": "two"}, "WORLD_SIZE='two'")]:
        with pytest.raises(GLUSError, match=message):
            resolve_shard(*flags, env=env)


def test_resolve_device() -> None:
    assert resolve_device("cpu", env={"LOCAL_RANK": "3"}) == "cpu"
    assert resolve_device("cuda", env={"LOCAL_RANK": "3"}) == "cuda:3"
    assert resolve_device("cuda", env={}) == "cuda"
    assert resolve_device("CUDA:1", env={"LOCAL_RANK": "3"}) == "cuda:1"  # an explicit index wins
    with pytest.raises(GLUSError, match="unknown device 'tpu'"):
        resolve_device("tpu", env={})


# ---------------------------------------------------------------------------------------------- key frames
@pytest.fixture(scope="module")
def pipe(model_args: list[str]) -> GLUSPipeline:
    args = dict(zip(model_args[::2], model_args[1::2]))
    return GLUSPipeline.from_pretrained(args["--model"], vision_tower=args["--vision-tower"],
                                        sam2_config=args["--sam2-config"], progress=False)


def read_masks(exp_dir: Path, names: list[str]) -> np.ndarray:
    return np.stack([np.asarray(Image.open(exp_dir / f"{n}.png")) > 0 for n in names])


def test_key_frame_json_entries_and_missing_ones(split: Path, single_run: Path, model_args: list[str],
                                                 pipe: GLUSPipeline, tmp_path: Path) -> None:
    video = load_dataset("mevis", split).videos["vid0"]
    # "3", "00003" and "00003.jpg" name the same frame, as in the released script; vid0_2 has no entry.
    table = tmp_path / "kf.json"
    table.write_text(json.dumps({"vid0_0": "00003", "vid0_1": "4.jpg", "other_5": "00001"}))
    out = tmp_path / "pred"
    assert infer(split, out, model_args, "--key-frame-json", str(table), "--limit-videos", "1") == 0
    assert {p.name for p in out.iterdir() if p.is_dir()} == {"vid0"}

    texts = [e.text for e in video.expressions.values()]
    with FrameStore(open_video(video.frame_paths)) as frames:
        expected = pipe(frames, texts, [3, 4, None])
        plain = pipe(frames, texts[:1], None)
    for exp_id, result in zip(video.expressions, expected):
        np.testing.assert_array_equal(read_masks(out / "vid0" / exp_id, video.frame_names), result.masks)
    assert not np.array_equal(expected[0].masks, plain[0].masks)  # the key frame changed the masks
    assert (out / "vid0" / "2" / "00000.png").read_bytes() == (single_run / "vid0" / "2" / "00000.png").read_bytes()
    settings = read_summary(out)["settings"]["key_frame_json"]
    assert settings["path"] == str(table.resolve()) and len(settings["sha256"]) == 64


def test_key_frame_auto(split: Path, model_args: list[str], pipe: GLUSPipeline, tmp_path: Path) -> None:
    video = load_dataset("mevis", split).videos["vid0"]
    out = tmp_path / "pred"
    assert infer(split, out, model_args, "--key-frame", "auto", "--limit-videos", "1") == 0
    with FrameStore(open_video(video.frame_paths)) as frames:
        expected = pipe(frames, [e.text for e in video.expressions.values()], "auto")
    assert any(r.key_frame for r in expected)  # the selector picked a later frame: two passes ran
    for exp_id, result in zip(video.expressions, expected):
        np.testing.assert_array_equal(read_masks(out / "vid0" / exp_id, video.frame_names), result.masks)
    assert read_summary(out)["settings"]["key_frame"] == "auto"


def test_plan_key_frames(split: Path, tmp_path: Path) -> None:
    videos = list(load_dataset("mevis", split).videos.values())
    plan = plan_key_frames(videos, "auto", {"vid1_2": "00005", "vid2_0": "0"}, "kf.json")
    assert plan["vid1"] == {"0": "auto", "1": "auto", "2": 5}
    assert plan["vid2"]["0"] is None  # frame 0: the plain forward pass
    assert set(plan["vid0"].values()) == {"auto"}
    assert set(plan_key_frames(videos, "none")["vid2"].values()) == {None}
    with pytest.raises(GLUSError, match=r"kf.json entry 'vid0_1': key frame '00099' is not one of the video"):
        plan_key_frames(videos, "none", {"vid0_1": "00099"}, "kf.json")


# ---------------------------------------------------------------------------------------------- input errors
@pytest.fixture
def no_model_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything tries to load a model (every input error must come first)."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(GLUSPipeline, "from_pretrained", refuse)
    monkeypatch.setattr("glus.model.checkpoint.from_pretrained", refuse)


def one_line_error(capsys: pytest.CaptureFixture, rc: int) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("glus infer: error: "), err
    return err[0]


def test_input_errors_are_one_line_and_come_before_the_model(split: Path, model_args: list[str], tmp_path: Path,
                                                            capsys: pytest.CaptureFixture,
                                                            no_model_loading: None) -> None:
    out = tmp_path / "pred"
    rc = cli_main(["infer", "--dataset", "mevis", "--split-dir", str(tmp_path / "nope"), "--out", str(out),
                   *model_args])
    assert f"{tmp_path / 'nope'}: dataset folder not found" in one_line_error(capsys, rc)

    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    line = one_line_error(capsys, infer(split, out, model_args, "--key-frame-json", str(bad_json)))
    assert f"{bad_json}: not a readable JSON file" in line

    wrong_frame = tmp_path / "wrong.json"
    wrong_frame.write_text(json.dumps({"vid1_0": "00050"}))
    line = one_line_error(capsys, infer(split, out, model_args, "--key-frame-json", str(wrong_frame)))
    assert "entry 'vid1_0': key frame '00050' is not one of the video's frames" in line

    line = one_line_error(capsys, infer(split, out, model_args, "--key-frame-json", str(tmp_path / "none.json")))
    assert "key-frame file not found" in line

    line = one_line_error(capsys, infer(split, out, model_args, "--shard-index", "1"))
    assert "--num-shards and --shard-index go together" in line
    line = one_line_error(capsys, infer(split, out, model_args, "--num-shards", "2", "--shard-index", "2"))
    assert "--shard-index must be in 0..1" in line
    line = one_line_error(capsys, infer(split, out, model_args, "--max-batch", "0"))
    assert "--max-batch must be >= 1" in line

    if not torch.cuda.is_available():
        line = one_line_error(capsys, infer(split, out, model_args, "--device", "cuda"))
        assert "no CUDA device is available" in line
    assert not list(out.rglob("*.png"))  # nothing was written by any of these


def test_unwritable_output_fails_before_anything_else(split: Path, model_args: list[str], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture, no_model_loading: None,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    line = one_line_error(capsys, infer(tmp_path / "nope", a_file / "pred", model_args))
    assert f"{a_file / 'pred'}: cannot create output folder" in line  # reported before the missing dataset

    read_only = tmp_path / "ro"
    read_only.mkdir()

    def denied(*args, **kwargs):  # what a read-only folder answers (root would ignore a chmod)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("glus.inference.writers.tempfile.mkstemp", denied)
    line = one_line_error(capsys, infer(tmp_path / "nope", read_only, model_args))
    assert line == f"glus infer: error: {read_only}: output folder is not writable (Permission denied)"


def test_rerun_with_other_settings_is_refused(split: Path, single_run: Path, model_args: list[str],
                                              tmp_path: Path, capsys: pytest.CaptureFixture,
                                              no_model_loading: None) -> None:
    import shutil

    out = tmp_path / "pred"
    shutil.copytree(single_run, out)
    line = one_line_error(capsys, infer(split, out, model_args, "--key-frame", "auto"))
    assert f"{out / SUMMARY_NAME}: this output folder holds predictions made with other settings" in line
    assert "key_frame: 'none' then, 'auto' now" in line
    assert tree(out) == tree(single_run)


def test_run_dataset_api_reports_counts(split: Path, single_run: Path, model_args: list[str],
                                        no_model_loading: None, tmp_path: Path) -> None:
    import shutil

    out = tmp_path / "pred"
    shutil.copytree(single_run, out)
    args = dict(zip(model_args[::2], model_args[1::2]))
    report = run_dataset(InferSettings("mevis", split, out, args["--model"], vision_tower=args["--vision-tower"],
                                       sam2_config=args["--sam2-config"], num_shards=2, shard_index=1),
                         progress=False, env={})
    # Everything is done already: the model is never loaded (no_model_loading) and nothing is written.
    assert (report.status, report.videos, report.expressions, report.expressions_done_before) == ("complete", 2, 6, 6)
    assert report.expressions_written == report.frames_written == 0 and report.model_load_seconds == 0
    assert tree(out) == tree(single_run)
    assert read_summary(out)["num_shards"] == 2  # the summary now describes the two-shard division


def test_missing_frame_images_fail_before_the_model(tmp_path: Path, model_args: list[str],
                                                    capsys: pytest.CaptureFixture, no_model_loading: None) -> None:
    split_dir = write_mevis_split(tmp_path / "mevis", _videos(1, 4), write_images=False)
    line = one_line_error(capsys, infer(split_dir, tmp_path / "pred", model_args))
    assert f"{split_dir / 'JPEGImages' / 'vid0' / '00000.jpg'}: frame image of video vid0 not found" in line


def test_a_failure_after_loading_is_recorded_in_the_summary(tmp_path: Path, model_args: list[str],
                                                            capsys: pytest.CaptureFixture) -> None:
    from glus.data.synthetic import SyntheticExpression

    video = _videos(1, 4)[0]
    long_text = " ".join(["the red circle moving to the right"] * 300)  # past the tiny LLM's 2048 positions
    video = dataclasses.replace(video, expressions=(video.expressions[0], SyntheticExpression(long_text, (0,))))
    split_dir = write_mevis_split(tmp_path / "mevis", [video])
    out = tmp_path / "pred"
    assert infer(split_dir, out, model_args) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]  # after the weight loader's own progress bar
    assert line.startswith("glus infer: error: expression vid0_1 is too long: its prompt needs")
    entry = read_summary(out)["shards"]["0"]
    assert entry["status"] == "failed" and entry["error"].startswith("expression vid0_1 is too long")
    assert entry["model_load_seconds"] > 0 and not list(out.rglob("*.png"))  # checked before the first mask


def test_concurrent_shards_keep_every_summary_entry(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from glus.inference.runner import ShardReport, update_summary

    (tmp_path / f".{SUMMARY_NAME}.k1l2.tmp").write_text("{")  # left by a writer killed mid-write
    settings = {"dataset": "mevis", "model": "m"}

    def finish(index: int) -> None:
        for status in ("running", "complete"):
            report = ShardReport(index, 8, status=status, videos=1, expressions=2, expression_frames=10)
            update_summary(tmp_path, settings, Shard(index, 8), report.to_dict(), {})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(finish, range(8)))
    summary = read_summary(tmp_path)
    assert list(summary["shards"]) == [str(i) for i in range(8)]
    assert summary["totals"]["complete"] and summary["totals"]["expression_frames"] == 80
    assert sorted(p.name for p in tmp_path.iterdir()) == [SUMMARY_NAME]
    with pytest.raises(GLUSError, match=r"other settings \(model: 'm' then, 'other' now\)"):
        update_summary(tmp_path, {**settings, "model": "other"}, Shard(0, 8), {}, {})


def test_full_disk_mid_run_is_one_line_and_resumes(split: Path, single_run: Path, model_args: list[str],
                                                   tmp_path: Path, capsys: pytest.CaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from test_user_errors import fill_disk_after

    out = tmp_path / "pred"
    with monkeypatch.context() as patch:
        fill_disk_after(patch, writes=30)  # in the second video's masks
        rc = infer(split, out, model_args)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and line.startswith("glus infer: error: ") and line.endswith(": No space left on device"), line
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]  # half-written files removed
    done_before = sum(1 for _ in out.rglob(DONE_MARKER))
    assert done_before >= 3  # the first video's expressions are complete and kept

    assert infer(split, out, model_args) == 0  # space freed: the run picks up where it stopped
    assert tree(out) == tree(single_run)
    assert read_summary(out)["totals"]["expressions_done_before"] == done_before
