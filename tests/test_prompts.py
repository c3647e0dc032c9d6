"""The GLUS prompt layer against every step the authors' inference recorded, plus training labels."""

from __future__ import annotations


import numpy as np
import pytest
import torch

from glus.config import GLUSConfig, glus_7b, tiny
from glus.prompts import (ANSWER_TEMPLATES, IGNORE_INDEX, INFERENCE_ANSWER, INFERENCE_ANSWER_PREFIX,
                          QUESTION_TEMPLATES, InferenceConversation, PromptBuilder, Turn, build_input_ids,
                          build_training_labels, encode_training_conversation, expanded_length,
                          normalize_expression, render_conversation, seg_prediction_positions,
                          tokenizer_image_token)
from glus.tokenizer import GLUSTokenizer


SYSTEM = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
          "helpful, detailed, and polite answers to the human's questions.")
IMG = "<im_start><image><im_end>"


def _passes(reference: dict):
    for run in reference["runs"]:
        for expression in run["expressions"]:
            for pass_ in expression["passes"]:
                yield run["run"], expression["expression"], pass_


def test_every_reference_step_rebuilt(reference: dict, tok: GLUSTokenizer) -> None:
    """Prompt string and input_ids of every recorded step, rebuilt from the pass's own history."""
    builder = PromptBuilder.from_config(tiny())
    steps = failed = 0
    for run, expression, pass_ in _passes(reference):
        conversation = InferenceConversation(builder, expression)
        for step in pass_["steps"]:
            prompt = conversation.prompt()
            assert prompt == step["prompt"], (run, pass_["name"], step["step"])
            assert tokenizer_image_token(prompt, tok) == step["input_ids"], (run, step["step"])
            assert conversation.num_query_frames_in_prompt == step["question_frame_num"]
            assert prompt.count("<image>") == step["context_frame_num"] + step["question_frame_num"]
            conversation.record(step["seg_generated"])
            steps += 1
            failed += not step["seg_generated"]
    # All five runs (plain and key-frame, rigged and unrigged: both answer forms) were covered.
    assert steps == 104 and 0 < failed < steps


def test_answer_forms_match_official(reference: dict, tok: GLUSTokenizer) -> None:
    builder = PromptBuilder()
    assert builder.answer() == ANSWER_TEMPLATES[INFERENCE_ANSWER].format(seg="[SEG]")
    assert builder.answer() == INFERENCE_ANSWER_PREFIX + "[SEG]."
    # Failure: the official code appends "[SEG] ." to the open prefix.
    assert builder.inference_answer(False) == "Sure, the segmentation result is [SEG] ."
    # Success: decode of the generated sequence, last assistant turn, plus "." (as inference_iter.py does).
    for run, _, pass_ in _passes(reference):
        for step in pass_["steps"]:
            if step["seg_generated"]:
                ids = [i for i in step["input_ids"] if i != -200] + [step["generated_token_id"]]
                text = tok.decode(ids).strip().replace("\n", "").replace("  ", " ")
                assert builder.inference_answer(True) == text.split("ASSISTANT: ")[-1].split("</s>")[0] + "."


def test_seg_positions_match_recorded_expanded_length(reference: dict, tok: GLUSTokenizer) -> None:
    n = tiny().image_tokens_per_frame
    assert n == 64
    for _, _, pass_ in _passes(reference):
        for step in pass_["steps"]:
            ids = step["input_ids"]
            assert expanded_length(ids, n) == step["lm_last"]["expanded_seq_len"]
            # The generated [SEG] is predicted at the last prompt position.
            positions = seg_prediction_positions(ids + [tok.seg_token_id], tok.seg_token_id, n)
            assert positions[-1] == step["lm_last"]["expanded_seq_len"] - 1
            assert len(positions) == ids.count(tok.seg_token_id) + 1


def _expand(ids: list[int], n: int) -> list[int]:
    out: list[int] = []
    for t in ids:
        out.extend([-200] * n if t == -200 else [t])
    return out


def test_seg_positions_against_explicit_expansion() -> None:
    seg = 7
    ids = [1, 5, -200, 9, seg, 3, -200, -200, seg, 2, -200, seg]
    for n in (1, 4, 64):
        expanded = _expand(ids, n)
        expected = [i - 1 for i, t in enumerate(expanded) if t == seg]
        assert seg_prediction_positions(ids, seg, n) == expected
        assert seg_prediction_positions(torch.tensor(ids), seg, n) == expected
        assert expanded_length(ids, n) == len(expanded)
    with pytest.raises(ValueError):
        seg_prediction_positions([seg, 1], seg, 4)
    with pytest.raises(ValueError):
        seg_prediction_positions(torch.zeros(2, 3, dtype=torch.long), seg, 4)


def test_normalize_expression() -> None:
    assert normalize_expression("The blue square that moves down.") == "the blue square that moves down"
    assert normalize_expression("A dog..") == "a dog."  # only one trailing dot goes
    assert normalize_expression(" Cat . ") == " cat . "  # inference keeps whitespace, as the official code
    assert normalize_expression(" Cat .", strip=True) == "cat"
    assert normalize_expression(" Cat. ", strip=True) == "cat."  # dot removal comes first, as in GLUS
    assert normalize_expression("") == ""


def test_inference_prompt_text_and_window() -> None:
    builder = PromptBuilder()
    first = builder.inference_prompt("The dog.", [])
    assert first == (SYSTEM + " USER: " + IMG * 4 + "\nPlease finished the following tasks on the context frames "
                     "above.\n" + IMG + "\nCan you segment the the dog in this frame? ASSISTANT: Sure, the "
                     "segmentation result is ")
    ok, bad = builder.inference_answer(True), builder.inference_answer(False)
    history = [ok, bad, ok, ok, bad]
    prompt = builder.inference_prompt("the dog", history)
    # Window of 4 query turns: the last 3 answers stay, the oldest kept turn carries the context images.
    assert prompt.count("<image>") == 4 + 4
    assert prompt.count("USER:") == 4 and prompt.count("Please finished") == 1
    assert prompt.index("Please finished") < prompt.index("Can you segment")
    answers = [seg.split("</s>")[0] for seg in prompt.split("ASSISTANT: ")[1:-1]]
    assert answers == history[-3:]
    assert prompt.endswith("ASSISTANT: Sure, the segmentation result is ")
    # query_frames=1 keeps only the open turn, with the context.
    single = PromptBuilder(query_frames=1).inference_prompt("the dog", history)
    assert single == first


def test_configurable_counts_and_tokens(tok: GLUSTokenizer) -> None:
    cfg = GLUSConfig(context_frames=2, query_frames=3)
    builder = PromptBuilder.from_config(cfg)
    conv = InferenceConversation(builder, "a cat")
    for step in range(6):
        prompt = conv.prompt()
        expected_images = 2 + min(step + 1, 3)
        assert prompt.count(IMG) == expected_images
        ids = build_input_ids(prompt, tok, builder)
        assert ids.dtype == torch.long and ids.dim() == 1
        assert int((ids == -200).sum()) == expected_images
        assert int((ids == tok.im_start_id).sum()) == expected_images
        conv.record(step % 2 == 0)
    plain = PromptBuilder(mm_use_im_start_end=False, context_frames=1)
    text = plain.inference_prompt("a cat", [])
    assert "<im_start>" not in text and text.count("<image>") == 2
    with pytest.raises(ValueError):
        PromptBuilder(query_frames=0)
    assert PromptBuilder.from_config(glus_7b()) == PromptBuilder()


def test_tokenizer_image_token_chunks(tok: GLUSTokenizer) -> None:
    # Each chunk is tokenised alone (its own dummy prefix), only the first keeps its BOS.
    ids = tokenizer_image_token("<image>\nthe dog<image>end", tok)
    assert ids == [1, -200] + tok.encode("\nthe dog", add_bos=False) + [-200] + tok.encode("end", add_bos=False)
    assert tokenizer_image_token("<image>", tok) == [1, -200]
    assert tokenizer_image_token("x<image>", tok, image_token_index=-7) == tok.encode("x") + [-7]


def test_render_conversation_rejects_open_middle_turn() -> None:
    with pytest.raises(ValueError):
        render_conversation([Turn("q"), Turn("q", "a")])


def test_training_conversation_text() -> None:
    builder = PromptBuilder()
    # The official loader removes the dot before trimming whitespace: " The Cat." -> "the cat".
    text = builder.training_conversation(" The Cat.", [0, 1, 2, 3], [0, 1, 2, 4])
    expected = (SYSTEM + " USER: " + IMG * 4 + "\nPlease finished the following tasks on the context frames above.\n"
                + IMG + "\nCan you segment the the cat in this frame? ASSISTANT: It is [SEG].</s>"
                + "USER: " + IMG + "\nPlease segment the the cat in this frame. ASSISTANT: Sure, [SEG].</s>"
                + "USER: " + IMG + "\nWhat is the cat in this frame? Please respond with segmentation mask. "
                + "ASSISTANT: Sure, it is [SEG].</s>"
                + "USER: " + IMG + "\nWhat is the cat in this frame? Please output segmentation mask. "
                + "ASSISTANT: [SEG].</s>")
    assert text == expected
    # With the inference phrasing the training text continues the inference prompt exactly.
    ok = builder.inference_answer(True)
    assert builder.training_conversation("the cat", [0] * 4, [3] * 4) == (
        builder.inference_prompt("the cat", [ok] * 3) + "[SEG].</s>")
    with pytest.raises(ValueError):
        builder.training_conversation("the cat", [0, 1], [0])


def test_sampled_training_conversation_uses_all_phrasings() -> None:
    builder = PromptBuilder()
    rng = np.random.default_rng(0)
    seen_q, seen_a = set(), set()
    for _ in range(60):
        text = builder.sample_training_conversation("the cat", rng)
        assert text.count("ASSISTANT: ") == 4 and text.endswith("</s>")
        for i, q in enumerate(QUESTION_TEMPLATES):
            if q.split("\n")[1].split("{expression}")[0] in text:
                seen_q.add(i)
        for i, a in enumerate(ANSWER_TEMPLATES):
            if "ASSISTANT: " + a.format(seg="[SEG]") + "</s>" in text:
                seen_a.add(i)
    assert seen_q == set(range(4)) and seen_a == set(range(5))
    same = [PromptBuilder().sample_training_conversation("x", np.random.default_rng(3)) for _ in range(2)]
    assert same[0] == same[1]
    assert builder.sample_training_conversation("x", rng, num_query=2).count("USER:") == 2


def _spans(labels: list[int]) -> list[tuple[int, int]]:
    spans, start = [], None
    for i, v in enumerate(labels + [IGNORE_INDEX]):
        if v != IGNORE_INDEX and start is None:
            start = i
        elif v == IGNORE_INDEX and start is not None:
            spans.append((start, i))
            start = None
    return spans


@pytest.mark.parametrize("answers", [[0, 1, 2, 3], [4, 4, 3, 0], [3, 3, 3, 3]])
def test_training_labels_keep_only_answers(tok: GLUSTokenizer, answers: list[int]) -> None:
    builder = PromptBuilder()
    text = builder.training_conversation("the red circle", [0, 1, 2, 3], answers)
    ids = tokenizer_image_token(text, tok)
    labels = build_training_labels(text, ids, tok, builder)
    assert len(labels) == len(ids) and labels[0] == IGNORE_INDEX
    spans = _spans(labels)
    assert len(spans) == 4
    for (start, end), answer in zip(spans, answers):
        assert labels[start:end] == ids[start:end]
        # The learned tokens are the answer itself and the </s> that closes the turn, nothing else.
        assert ids[start:end] == tok.encode(builder.answer(answer), add_bos=False) + [tok.eos_token_id]
        assert tok.seg_token_id in ids[start:end]
    # The image indices and every [SEG]-predicting position of the question side are masked.
    assert all(lab == IGNORE_INDEX for lab, i in zip(labels, ids) if i == -200)
    ids_t, labels_t = encode_training_conversation(text, tok, builder)
    assert ids_t.dtype == labels_t.dtype == torch.long
    assert ids_t.tolist() == ids and labels_t.tolist() == labels
    with pytest.raises(ValueError):
        build_training_labels(text, ids[:-1], tok, builder)
    with pytest.raises(ValueError):
        build_training_labels(text.replace(" ASSISTANT: ", " "), ids, tok, builder)
