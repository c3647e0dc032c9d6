"""The legacy LLaMA tokenizer against the authors' tiny reference (transformers 4.31 slow LlamaTokenizer)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from glus.errors import GLUSError
from glus.tokenizer import GLUSTokenizer

from conftest import OFFICIAL_TINY

TINY = OFFICIAL_TINY



def test_special_token_ids_pinned(tok: GLUSTokenizer, reference: dict) -> None:
    # The ids the released-format tiny tokenizer gives (README: [SEG]=700, <im_start>=701, <im_end>=702).
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2, 0)
    assert (tok.seg_token_id, tok.im_start_id, tok.im_end_id) == (700, 701, 702)
    assert len(tok) == 703 and tok.sp_vocab_size == 700
    ref = reference["tokenizer"]
    assert len(tok) == ref["len"] and tok.sp_vocab_size == ref["sp_vocab_size"]
    assert tok.seg_token_id == ref["seg_token_idx"]
    assert (tok.im_start_id, tok.im_end_id) == (ref["im_start_id"], ref["im_end_id"])
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.pad_token_id) == (
        ref["bos"], ref["eos"], ref["unk"], ref["pad"])
    # LISA/GLUS read the [SEG] id as tokenizer("[SEG]", add_special_tokens=False).input_ids[0].
    assert tok.encode("[SEG]", add_bos=False) == [700]


def test_reference_examples(tok: GLUSTokenizer, reference: dict) -> None:
    examples = reference["tokenizer"]["examples"]
    assert len(examples) >= 5
    for text, ids in examples.items():
        assert tok.encode(text) == ids, text


def test_legacy_details(tok: GLUSTokenizer) -> None:
    lone, dot = tok.token_to_id("▁"), tok.token_to_id(".")
    # Text after an added token gets a fresh dummy prefix: "[SEG]." -> [SEG], "▁", ".".
    assert tok.encode("[SEG].", add_bos=False) == [700, lone, dot]
    assert tok.tokenize("[SEG].") == ["[SEG]", "▁", "."]
    # A trailing space survives as a lone "▁" (remove_extra_whitespaces is off in LLaMA's model).
    assert tok.encode("is ", add_bos=False)[-1] == lone
    # "</s>" inside the text is the eos id, and the text after it starts a new chunk ("▁USER").
    ids = tok.encode("a</s>USER:", add_bos=False)
    assert ids[ids.index(2) + 1] == tok.token_to_id("▁USER")
    # Added tokens eat whitespace (newlines too) on both sides; the special </s> does not.
    assert tok.encode("x <im_start> \n y") == tok.encode("x<im_start>y")
    assert tok.encode("x </s> y") != tok.encode("x</s>y")
    # The failure answer "[SEG] ." and the success answer "[SEG]." give the same ids.
    assert tok.encode("is [SEG] .") == tok.encode("is [SEG].")
    # <s> and <unk> in the text are their ids, not pieces of text.
    assert tok.encode("<s><unk>", add_bos=False) == [1, 0]
    assert tok.encode("hi", add_bos=False, add_eos=True)[-1] == 2


def test_decode_matches_official_text_output(tok: GLUSTokenizer, reference: dict) -> None:
    # inference_iter.py decodes the generated sequence (image indices removed) and post-processes it;
    # the final text of every pass must come out identical (including the byte-fallback "\ufffd").
    checked = 0
    for run in reference["runs"]:
        for expression in run["expressions"]:
            for pass_ in expression["passes"]:
                step = pass_["steps"][-1]
                ids = [i for i in step["input_ids"] if i != -200] + [step["generated_token_id"]]
                text = tok.decode(ids).strip().replace("\n", "").replace("  ", " ")
                assert text == pass_["final_text_output"]
                checked += 1
    assert checked >= 10


def test_decode_round_trip_and_tokens(tok: GLUSTokenizer) -> None:
    text = "Héllo wörld 日本 [SEG] done"
    ids = tok.encode(text)
    assert tok.decode(ids, skip_special_tokens=True) == "Héllo wörld 日本 [SEG] done"
    assert tok.decode(ids).startswith("<s>")
    assert tok.convert_ids_to_tokens(700) == "[SEG]"
    assert tok.convert_tokens_to_ids(["<im_start>", "<im_end>"]) == [701, 702]
    assert 1 not in tok.convert_ids_to_tokens(ids, skip_special_tokens=True)
    with pytest.raises(ValueError):
        tok.convert_ids_to_tokens(-200)
    with pytest.raises(GLUSError):
        tok.token_to_id("<no such token>")


def test_save_pretrained_round_trip(tok: GLUSTokenizer, tmp_path: Path) -> None:
    written = tok.save_pretrained(tmp_path / "out")
    assert sorted(p.name for p in written) == sorted(
        ["tokenizer.model", "added_tokens.json", "special_tokens_map.json", "tokenizer_config.json"])
    assert (tmp_path / "out" / "tokenizer.model").read_bytes() == (TINY / "tokenizer.model").read_bytes()
    for name in ("added_tokens.json", "special_tokens_map.json", "tokenizer_config.json"):
        assert json.loads((tmp_path / "out" / name).read_text()) == json.loads((TINY / name).read_text()), name
    assert not list((tmp_path / "out").glob("*.tmp"))
    again = GLUSTokenizer.from_pretrained(tmp_path / "out")
    text = "USER: <im_start><im_end> Can you segment the dog? ASSISTANT: It is [SEG].</s>"
    assert again.encode(text) == tok.encode(text)
    assert len(again) == len(tok)


def test_add_tokens_like_lisa(tmp_path: Path) -> None:
    # A plain LLaMA folder (sentencepiece model only) plus LISA's add_tokens calls gives the same ids.
    shutil.copy(TINY / "tokenizer.model", tmp_path / "tokenizer.model")
    base = GLUSTokenizer.from_pretrained(tmp_path)
    assert len(base) == 700
    with pytest.raises(GLUSError):
        base.seg_token_id
    assert base.add_tokens(["[SEG]"]) == 1
    assert base.add_tokens(["<im_start>", "<im_end>", "[SEG]", "▁the"]) == 2
    assert (base.seg_token_id, base.im_start_id, base.im_end_id, len(base)) == (700, 701, 702, 703)
    ref = GLUSTokenizer.from_pretrained(TINY)
    text = "x <im_start>\nsegment [SEG]."
    assert base.encode(text) == ref.encode(text)


def test_user_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(GLUSError, match="tokenizer.model"):
        GLUSTokenizer.from_pretrained(tmp_path)
    shutil.copy(TINY / "tokenizer.model", tmp_path / "tokenizer.model")
    (tmp_path / "added_tokens.json").write_text('{"[SEG]": 705}')
    with pytest.raises(GLUSError, match="added_tokens.json.*next free id is 700"):
        GLUSTokenizer.from_pretrained(tmp_path)
    (tmp_path / "added_tokens.json").write_text("{not json")
    with pytest.raises(GLUSError, match="added_tokens.json.*invalid JSON"):
        GLUSTokenizer.from_pretrained(tmp_path)
    (tmp_path / "added_tokens.json").unlink()
    (tmp_path / "tokenizer_config.json").write_text('{"legacy": false}')
    with pytest.raises(GLUSError, match="tokenizer_config.json.*legacy"):
        GLUSTokenizer.from_pretrained(tmp_path)
    (tmp_path / "tokenizer_config.json").unlink()
    (tmp_path / "tokenizer.model").write_bytes(b"not a model")
    with pytest.raises(GLUSError, match="tokenizer.model"):
        GLUSTokenizer.from_pretrained(tmp_path)
