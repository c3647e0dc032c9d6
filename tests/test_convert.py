"""``glus convert``: the authors' tiny checkpoint -> glus's format, same outputs; errors; atomic output."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from safetensors import safe_open

from glus.cli import main
from glus.data.sampling import inference_context_frames, query_window
from glus.errors import GLUSError
from glus.model import checkpoint as ckpt
from glus.model.checkpoint import from_pretrained
from glus.model.convert import convert_checkpoint
from glus.model.glus import GLUSModel
from glus.model.memory_bank import MemoryBank
from glus.prompts import InferenceConversation, PromptBuilder, build_input_ids
from glus.tokenizer import GLUSTokenizer

from conftest import OFFICIAL_TINY

REF = OFFICIAL_TINY

CLIP, YAML = REF / "clip", REF / "sam2_tiny.yaml"
GAMMAS = [f"model.visual_model.memory_encoder.fuser.layers.{i}.gamma" for i in range(2)]
TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")



@pytest.fixture(scope="module")
def official() -> GLUSModel:
    return from_pretrained(REF, vision_tower=CLIP, sam2_config=YAML)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    dst = tmp_path_factory.mktemp("convert") / "glus_tiny"
    assert main(["convert", str(REF), str(dst), "--vision-tower", str(CLIP), "--sam2-config", str(YAML)]) == 0
    return dst


@pytest.fixture(scope="module")
def converted_model(converted: Path) -> GLUSModel:
    return from_pretrained(converted)  # no --vision-tower / --sam2-config: the folder holds everything


def _frames(reference: dict) -> list[np.ndarray]:
    return [cv2.cvtColor(cv2.imread(str(REF / rec["png"])), cv2.COLOR_BGR2RGB) for rec in reference["frames"]]


def test_converted_folder_holds_every_tensor(converted: Path, official: GLUSModel) -> None:
    assert sorted(p.name for p in converted.iterdir()) == sorted(
        ["config.json", "model.safetensors", "vision_tower", *TOKENIZER_FILES])
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {
        p.name for p in (converted / "vision_tower").iterdir()}
    raw = json.loads((converted / "config.json").read_text())
    assert raw["format"] == "glus" and raw["source"] == str(REF)
    assert raw["config"]["sam2"]["d_model"] == 32 and raw["config"]["prompt_dim"] == 32
    expected = official.state_dict()
    with safe_open(str(converted / "model.safetensors"), "pt") as f:
        assert sorted(f.keys()) == sorted(expected)  # no missing, no unexpected key
        for key in expected:
            assert torch.equal(f.get_tensor(key), expected[key]), key
        for key in GAMMAS:  # compat official (the default): the values the authors' loader runs with
            assert torch.equal(f.get_tensor(key), torch.full((32,), 1e-6))
    # nothing half-written or temporary is left beside the output
    assert [p.name for p in converted.parent.iterdir()] == [converted.name]
    # modes as open() gives them, not the owner-only ones of temporary files (transformers' CLIP save included)
    from glus.fileio import FILE_MODE

    assert {p.relative_to(converted).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in converted.rglob("*")
            if p.is_file()} == {p.relative_to(converted).as_posix(): FILE_MODE for p in converted.rglob("*")
                                if p.is_file()}


def test_converted_model_loads_without_arguments(converted_model: GLUSModel, official: GLUSModel) -> None:
    assert converted_model.config == official.config
    assert converted_model.seg_token_id == 700
    state, expected = converted_model.state_dict(), official.state_dict()
    assert list(state) == list(expected) and all(torch.equal(state[k], expected[k]) for k in state)
    tower, tower_expected = converted_model.vision_tower.state_dict(), official.vision_tower.state_dict()
    assert all(torch.equal(tower[k], tower_expected[k]) for k in tower_expected)


def test_converted_model_reproduces_the_official_steps(converted_model: GLUSModel, official: GLUSModel,
                                                       reference: dict) -> None:
    """The first steps of the official plain run, through both models: same token, [SEG] embedding and SAM-2
    mask logits (bit for bit), and the recorded mask."""
    tokenizer = GLUSTokenizer.from_pretrained(REF)
    run = next(r for r in reference["runs"] if r["run"] == "rigged_no_kf")
    frames = _frames(reference)
    context = inference_context_frames(len(frames))
    builder = PromptBuilder.from_config(official.config)
    sam_cache: dict[tuple[int, int], object] = {}  # (model, frame) -> SAM-2 features, shared by the expressions
    with np.load(REF / "mask_logits.npz") as npz:
        for expr in run["expressions"]:
            p = expr["passes"][0]
            conv = InferenceConversation(builder, expr["expression"])
            banks = {id(official): MemoryBank(), id(converted_model): MemoryBank()}
            for index, step in enumerate(p["steps"][:3]):
                ids = build_input_ids(conv.prompt(), tokenizer, builder)
                assert ids.tolist() == step["input_ids"]
                window = [p["question_frames"][s] for s in query_window(index, builder.query_frames)]
                results = []
                with torch.no_grad():
                    for model in (official, converted_model):
                        images = model.clip_embed_frames([frames[i] for i in context + window])
                        token = model.generate_one_token(model.build_inputs_embeds([ids], images))
                        key = (id(model), step["frame_index"])
                        if key not in sam_cache:
                            sam_cache[key] = model.sam_encode_frame(frames[step["frame_index"]])
                        frame = sam_cache[key]
                        res = model.sam2.decode(frame.features, token.seg_embedding.unsqueeze(1),
                                                banks[id(model)], index, model.config.mem_stride_infer, frame.size)
                        results.append((token, res))
                (tok_a, res_a), (tok_b, res_b) = results
                assert int(tok_a.token_ids[0]) == int(tok_b.token_ids[0]) == step["generated_token_id"] == 700
                assert torch.equal(tok_a.seg_embedding, tok_b.seg_embedding)
                assert (tok_b.seg_embedding[0] - torch.tensor(step["seg_embedding"])).abs().max() <= 1e-4
                assert torch.equal(res_a.logits, res_b.logits)
                logits = res_b.logits[0, 0].numpy()
                assert np.abs(logits - npz[step["logits_npz_key"]]).max() <= 1e-4
                rle = dict(step["mask_rle"], counts=step["mask_rle"]["counts"].encode())
                assert np.array_equal(mask_utils.decode(rle).astype(bool), logits > 0)
                conv.record(True)


def test_cli_reports_what_it_did(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dst = tmp_path / "stored"
    rc = main(["convert", str(REF), str(dst), "--vision-tower", str(CLIP), "--sam2-config", str(YAML),
               "--compat", "stored", "--dtype", "bf16"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "333 tensors" in out and "compat=stored" in out and "bf16" in out and str(dst) in out
    file_state = torch.load(REF / "pytorch_model.bin", map_location="cpu", weights_only=True)
    with safe_open(str(dst / "model.safetensors"), "pt") as f:
        assert len(list(f.keys())) == 333
        for key in GAMMAS:  # compat stored: the file's own values (in the chosen precision)
            assert torch.equal(f.get_tensor(key), file_state[key].to(torch.bfloat16))
        keys = f.keys()  # safe_open is not a mapping
        assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in keys)
    model = from_pretrained(dst, dtype="bf16")
    assert model.dtype == torch.bfloat16 and model.vision_tower.dtype == torch.bfloat16


def test_library_report(tmp_path: Path) -> None:
    report = convert_checkpoint(REF, tmp_path / "out", vision_tower=CLIP, sam2_config=YAML)
    assert (report.source_format, report.num_tensors, report.compat, report.dtype) == ("released", 333, "official",
                                                                                      "fp32")
    # 839,514 numbers in the file, less the two rotary buffers (2 x 8) that are not weights
    assert report.num_parameters == 839_514 - 16
    # a glus-format folder can be re-saved (e.g. in another precision), never re-"officialised"
    again = convert_checkpoint(tmp_path / "out", tmp_path / "again", dtype="fp16")
    assert (again.source_format, again.compat, again.dtype) == ("glus", "stored", "fp16")
    with pytest.raises(GLUSError, match="already in glus format"):
        convert_checkpoint(tmp_path / "out", tmp_path / "third", compat="official")


def _copy_with_state(tmp_path: Path, edit) -> Path:
    """A released folder like the reference one whose weights went through ``edit``."""
    folder = tmp_path / "src"
    folder.mkdir()
    for name in ("config.json", *TOKENIZER_FILES):
        shutil.copy(REF / name, folder / name)
    state = torch.load(REF / "pytorch_model.bin", map_location="cpu", weights_only=True)
    edit(state)
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def _cli_error(argv: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("glus convert: error: "), captured.err
    return lines[0]


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dst = tmp_path / "dst"
    common = ["--vision-tower", str(CLIP), "--sam2-config", str(YAML)]

    msg = _cli_error(["convert", str(tmp_path / "absent"), str(dst), *common], capsys)
    assert str(tmp_path / "absent") in msg and "not found" in msg

    src = _copy_with_state(tmp_path, lambda s: s.update({"model.visual_model.extra.weight": torch.zeros(1)}))
    msg = _cli_error(["convert", str(src), str(dst), *common], capsys)
    assert "1 unexpected key(s): model.visual_model.extra.weight" in msg and str(src) in msg

    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  image_encoder: [1, 2\n")
    msg = _cli_error(["convert", str(REF), str(dst), "--vision-tower", str(CLIP), "--sam2-config", str(bad)], capsys)
    assert str(bad) in msg and "invalid YAML" in msg

    no_tokenizer = tmp_path / "no_tok"
    no_tokenizer.mkdir()
    shutil.copy(REF / "config.json", no_tokenizer / "config.json")
    msg = _cli_error(["convert", str(no_tokenizer), str(dst), *common], capsys)
    assert "tokenizer.model" in msg

    assert not dst.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folders left


def test_existing_destination(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    common = ["--vision-tower", str(CLIP), "--sam2-config", str(YAML)]
    msg = _cli_error(["convert", str(REF), str(dst), *common], capsys)
    assert "not empty" in msg and (dst / "keep.txt").read_text() == "mine"
    msg = _cli_error(["convert", str(REF), str(REF), *common], capsys)
    assert "is the source folder" in msg
    assert main(["convert", str(REF), str(dst), *common, "--overwrite"]) == 0
    assert not (dst / "keep.txt").exists() and (dst / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst"]


def test_interrupted_convert_leaves_nothing_that_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_safetensors_atomic", crash)
    with pytest.raises(KeyboardInterrupt):
        convert_checkpoint(REF, tmp_path / "dst", vision_tower=CLIP, sam2_config=YAML)
    assert list(tmp_path.iterdir()) == []  # neither the destination nor the temporary folder
