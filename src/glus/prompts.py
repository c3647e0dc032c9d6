"""The GLUS prompt: conversation template, inference / training conversations, image tokens and labels.

One source of truth for every string the language model sees. The template is LLaVA's ``llava_v1``
(``SeparatorStyle.TWO``)::

    {system} USER: {question} ASSISTANT: {answer}</s>USER: {question} ASSISTANT: {answer}</s>...

GLUS's conversation for one expression and a window of query frames (``I`` = ``<im_start><image><im_end>``):

- first user turn: ``I`` x context_frames + ``"\\nPlease finished the following tasks on the context frames
  above.\\n"`` + ``I`` + ``"\\nCan you segment the {expression} in this frame?"``;
- later user turns: ``I`` + the question;
- assistant turns: ``"Sure, the segmentation result is [SEG]."`` (training draws question and answer phrasings
  from :data:`QUESTION_TEMPLATES` and :data:`ANSWER_TEMPLATES`).

At inference (:class:`InferenceConversation`) the last assistant turn is left open after
``"Sure, the segmentation result is "`` and the model generates one token; the prompt keeps the last
``query_frames`` turns, the oldest of which carries the context images. A successful past turn reads
``"... is [SEG]."``, a failed one (the model did not emit ``[SEG]``) ``"... is [SEG] ."`` — exactly what the
official ``inference_iter.py`` feeds back.

``<image>`` becomes the id :attr:`GLUSConfig.image_token_index` (-200) in ``input_ids``
(:func:`tokenizer_image_token`); the model later replaces each by ``image_tokens_per_frame`` embeddings.
:func:`seg_prediction_positions` finds, in that expanded sequence, the position whose next-token prediction is
each ``[SEG]`` (where the ``[SEG]`` hidden state is read).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from glus.config import GLUSConfig

if TYPE_CHECKING:  # only for annotations: prompts never needs the tokenizer module at import time
    from glus.tokenizer import GLUSTokenizer

IGNORE_INDEX = -100

SYSTEM_PROMPT = ("A chat between a curious human and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the human's questions.")
ROLES = ("USER", "ASSISTANT")
SEP = " "  # after the system prompt and after each user turn
SEP2 = "</s>"  # after each assistant turn

# "{image}" is the image placeholder, "{expression}" the normalised referring expression.
CONTEXT_INSTRUCTION = "\nPlease finished the following tasks on the context frames above.\n"
QUESTION_TEMPLATES = (
    "{image}\nCan you segment the {expression} in this frame?",
    "{image}\nPlease segment the {expression} in this frame.",
    "{image}\nWhat is {expression} in this frame? Please respond with segmentation mask.",
    "{image}\nWhat is {expression} in this frame? Please output segmentation mask.",
)
# "{seg}" is the segmentation token.
ANSWER_TEMPLATES = (
    "It is {seg}.",
    "Sure, {seg}.",
    "Sure, it is {seg}.",
    "Sure, the segmentation result is {seg}.",
    "{seg}.",
)
INFERENCE_QUESTION = 0  # index into QUESTION_TEMPLATES used at inference
INFERENCE_ANSWER = 3  # index into ANSWER_TEMPLATES whose text the inference answer follows
INFERENCE_ANSWER_PREFIX = "Sure, the segmentation result is "


def normalize_expression(expression: str, *, strip: bool = False) -> str:
    """The expression as it enters the prompt: one trailing ``"."`` removed, lower-cased.

    ``strip=True`` also trims surrounding whitespace after removing the dot, as the official training loader
    does; the official inference does not. Articles are kept, so ``"the red circle"`` reads
    ``"Can you segment the the red circle ..."`` in the prompt, as in the released code.
    """
    text = expression[:-1] if expression.endswith(".") else expression
    if strip:
        text = text.strip()
    return text.lower()


@dataclass(frozen=True)
class Turn:
    """One user/assistant exchange. ``answer=None`` leaves the assistant turn open after ``answer_prefix``."""

    question: str
    answer: str | None = None
    answer_prefix: str = ""


def render_conversation(turns: Sequence[Turn], *, system: str = SYSTEM_PROMPT) -> str:
    """``llava_v1`` text of ``turns``. An open last turn ends right after its answer prefix (no ``</s>``)."""
    text = system + SEP
    for index, turn in enumerate(turns):
        text += f"{ROLES[0]}: {turn.question}{SEP}"
        if turn.answer is None:
            if index != len(turns) - 1:
                raise ValueError("only the last turn may be open")
            # The official code renders the open answer followed by "</s>" and then cuts at the last "</s>",
            # which is the same as writing the prefix alone.
            text += f"{ROLES[1]}: {turn.answer_prefix}"
        else:
            text += f"{ROLES[1]}: {turn.answer}{SEP2}"
    return text


@dataclass(frozen=True)
class PromptBuilder:
    """Builds GLUS's turns for a given model configuration (frame counts and special-token strings)."""

    context_frames: int = 4
    query_frames: int = 4
    image_token: str = "<image>"
    im_start_token: str = "<im_start>"
    im_end_token: str = "<im_end>"
    seg_token: str = "[SEG]"
    mm_use_im_start_end: bool = True
    image_token_index: int = -200

    @classmethod
    def from_config(cls, config: GLUSConfig) -> "PromptBuilder":
        return cls(context_frames=config.context_frames, query_frames=config.query_frames,
                   image_token=config.image_token, im_start_token=config.im_start_token,
                   im_end_token=config.im_end_token, seg_token=config.seg_token,
                   mm_use_im_start_end=config.mm_use_im_start_end, image_token_index=config.image_token_index)

    def __post_init__(self) -> None:
        if self.context_frames < 0 or self.query_frames < 1:
            raise ValueError(f"need context_frames >= 0 and query_frames >= 1, got "
                             f"{self.context_frames} and {self.query_frames}")

    def markers(self, tokenizer=None) -> list[str]:
        """The strings an expression may not hold: the prompt's frame and ``[SEG]`` tokens, LLaMA's ``<s>``,
        ``</s>``, ``<unk>``, and every added or special token of ``tokenizer`` when one is given."""
        found = [self.image_token, self.im_start_token, self.im_end_token, self.seg_token, "<s>", "</s>", "<unk>"]
        if tokenizer is not None:
            found += [*tokenizer.added_tokens_encoder, *tokenizer.all_special_tokens]
        return list(dict.fromkeys(found))

    def check_expression(self, index: int, text: str, tokenizer=None) -> None:
        """Raise :class:`~glus.errors.GLUSError` (one line, naming expression ``index``) if ``text`` cannot be an
        expression.

        Any Unicode text is tokenised as it is (tabs, newlines and other control characters included, as the
        authors' code does). Refused: empty or white-space-only text; characters that are not text (a shell's
        undecodable bytes reach Python as lone surrogates, which no tokenizer can encode); and the prompt's own
        :meth:`markers`, which inside an expression would be read as a frame, a segmentation answer or the end of
        the turn rather than as words.
        """
        from glus.errors import GLUSError

        if not text or not text.strip():
            raise GLUSError(f"expression {index} is empty")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            code = ord(text[exc.start])
            what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
            raise GLUSError(f"expression {index} is not valid UTF-8 text: character {exc.start} is an undecodable "
                            f"{what}") from None
        found = next((m for m in self.markers(tokenizer) if m in text), None)
        if found is not None:
            raise GLUSError(f"expression {index} contains {found!r}, one of the model's own prompt tokens; remove "
                            "it or write it otherwise")

    @property
    def image_placeholder(self) -> str:
        """One frame in the text: ``<im_start><image><im_end>`` (or ``<image>`` without start/end tokens)."""
        if self.mm_use_im_start_end:
            return self.im_start_token + self.image_token + self.im_end_token
        return self.image_token

    def _with_placeholders(self, text: str) -> str:
        # The official code writes "<image>" and then replaces every "<image>" of the message (an expression
        # that contains the literal text "<image>" included) by the start/image/end triple.
        if self.mm_use_im_start_end:
            return text.replace(self.image_token, self.image_placeholder)
        return text

    def context_block(self) -> str:
        """The context frames and the instruction that precedes the first question.

        The released code always writes 4 images here (its constant ``CONTEXT_FRAME_NUM``), whatever
        ``--context_frame_num`` says; glus writes ``context_frames`` images, the same text for the default 4.
        """
        return self._with_placeholders(self.image_token * self.context_frames + CONTEXT_INSTRUCTION)

    def question(self, expression: str, template: int = INFERENCE_QUESTION) -> str:
        """One query-frame question about an already normalised ``expression``."""
        return self._with_placeholders(QUESTION_TEMPLATES[template].format(image=self.image_token,
                                                                           expression=expression))

    def answer(self, template: int = INFERENCE_ANSWER) -> str:
        """One closed assistant answer, e.g. ``"Sure, [SEG]."``."""
        return ANSWER_TEMPLATES[template].format(seg=self.seg_token)

    def inference_answer(self, seg_generated: bool) -> str:
        """What a past inference turn reads in later prompts.

        Success: the generated text plus ``"."`` (``"Sure, the segmentation result is [SEG]."``). Failure: the
        official code appends ``"[SEG] ."`` (with a space) to the open prefix.
        """
        suffix = self.seg_token + "." if seg_generated else self.seg_token + " ."
        return INFERENCE_ANSWER_PREFIX + suffix

    def inference_turns(self, expression: str, past_answers: Sequence[str]) -> list[Turn]:
        """Turns of the prompt for the next query frame, after ``past_answers`` of this pass.

        Only the last ``query_frames - 1`` past answers stay, plus the open turn; the first kept turn carries
        the context frames. ``expression`` is normalised here (:func:`normalize_expression`).
        """
        text = normalize_expression(expression)
        kept = list(past_answers)[max(0, len(past_answers) - (self.query_frames - 1)):] if self.query_frames > 1 else []
        question = self.question(text)
        turns = [Turn(question, answer) for answer in kept]
        turns.append(Turn(question, None, INFERENCE_ANSWER_PREFIX))
        turns[0] = Turn(self.context_block() + turns[0].question, turns[0].answer, turns[0].answer_prefix)
        return turns

    def inference_prompt(self, expression: str, past_answers: Sequence[str]) -> str:
        return render_conversation(self.inference_turns(expression, past_answers))

    def training_conversation(self, expression: str, question_templates: Sequence[int],
                              answer_templates: Sequence[int]) -> str:
        """Full training text for one expression: one closed turn per query frame (``len(question_templates)``)."""
        if len(question_templates) != len(answer_templates) or not question_templates:
            raise ValueError("need one question and one answer template per query frame")
        text = normalize_expression(expression, strip=True)
        turns = [Turn(self.question(text, q), self.answer(a)) for q, a in zip(question_templates, answer_templates)]
        turns[0] = Turn(self.context_block() + turns[0].question, turns[0].answer)
        return render_conversation(turns)

    def sample_training_conversation(self, expression: str, rng: np.random.Generator,
                                     num_query: int | None = None) -> str:
        """Training text with each turn's question and answer phrasing drawn uniformly (as GLUS trains)."""
        n = self.query_frames if num_query is None else num_query
        questions = rng.integers(0, len(QUESTION_TEMPLATES), size=n).tolist()
        answers = rng.integers(0, len(ANSWER_TEMPLATES), size=n).tolist()
        return self.training_conversation(expression, questions, answers)


@dataclass
class InferenceConversation:
    """The per-expression, per-pass conversation state of the official inference loop (owned by the caller).

    Usage per query frame: ``prompt = conv.prompt()``; run the model; ``conv.record(seg_generated)``.
    """

    builder: PromptBuilder
    expression: str
    answers: list[str] = field(default_factory=list)

    def prompt(self) -> str:
        return self.builder.inference_prompt(self.expression, self.answers)

    def record(self, seg_generated: bool) -> None:
        self.answers.append(self.builder.inference_answer(seg_generated))

    @property
    def num_query_frames_in_prompt(self) -> int:
        """How many query frames the next prompt holds (``min(step + 1, query_frames)``)."""
        return min(len(self.answers) + 1, self.builder.query_frames)


def tokenizer_image_token(prompt: str, tokenizer: "GLUSTokenizer", image_token: str = "<image>",
                          image_token_index: int = -200) -> list[int]:
    """Ids of ``prompt`` with each ``image_token`` replaced by ``image_token_index`` (LLaVA's rule).

    The text between image tokens is tokenised chunk by chunk (each chunk gets its own dummy-prefix
    behaviour) and only the first chunk keeps its BOS, exactly as LLaVA's ``tokenizer_image_token``.
    """
    chunks = [tokenizer.encode(chunk) for chunk in prompt.split(image_token)]
    bos = tokenizer.bos_token_id
    offset = 1 if chunks and chunks[0] and chunks[0][0] == bos else 0
    ids: list[int] = [bos] if offset else []
    for index, chunk in enumerate(chunks):
        if index > 0:
            ids.append(image_token_index)
        ids.extend(chunk[offset:])
    return ids


def build_input_ids(prompt: str, tokenizer: "GLUSTokenizer", builder: PromptBuilder) -> torch.Tensor:
    """``input_ids`` tensor of shape [L] (int64) for ``prompt``; image placeholders are ``image_token_index``."""
    ids = tokenizer_image_token(prompt, tokenizer, builder.image_token, builder.image_token_index)
    return torch.tensor(ids, dtype=torch.long)


def build_training_labels(conversation: str, input_ids: Sequence[int], tokenizer: "GLUSTokenizer",
                          builder: PromptBuilder) -> list[int]:
    """Targets for ``input_ids`` of a closed ``conversation``: everything but the assistant answers is -100.

    LISA's rule: the conversation is cut at each ``</s>``; each round is tokenised alone (its BOS stands for
    the ``</s>`` that closes it in the full sequence) and its instruction part — up to and including
    ``"ASSISTANT:"`` — is masked, so the answer tokens and their closing ``</s>`` are learned. The BOS and
    everything after the last round are masked too. Raises ``ValueError`` if the round lengths do not add
    up to ``len(input_ids)`` (a tokenisation mismatch would silently shift every label).
    """
    labels = list(int(i) for i in input_ids)
    sep = SEP + ROLES[1] + ": "

    def count(text: str) -> int:
        return len(tokenizer_image_token(text, tokenizer, builder.image_token, builder.image_token_index))

    cur = 1
    labels[:cur] = [IGNORE_INDEX] * cur
    for round_text in conversation.split(SEP2):
        if round_text == "":
            break
        parts = round_text.split(sep)
        if len(parts) != 2:
            raise ValueError(f"round does not hold exactly one {sep.strip()!r}: {round_text!r}")
        round_len = count(round_text)
        # -2: the BOS, and the lone "▁" that the trailing space of "ASSISTANT: " tokenises to on its own.
        instruction_len = count(parts[0] + sep) - 2
        labels[cur:cur + instruction_len] = [IGNORE_INDEX] * len(labels[cur:cur + instruction_len])
        cur += round_len
    labels[cur:] = [IGNORE_INDEX] * len(labels[cur:])
    if cur != len(labels):
        raise ValueError(f"rounds cover {cur} tokens but the conversation has {len(labels)}")
    return labels


def encode_training_conversation(conversation: str, tokenizer: "GLUSTokenizer",
                                 builder: PromptBuilder) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, labels)`` of a closed training conversation, both int64 tensors of shape [L]."""
    ids = tokenizer_image_token(conversation, tokenizer, builder.image_token, builder.image_token_index)
    labels = build_training_labels(conversation, ids, tokenizer, builder)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long)


def expanded_length(input_ids: Sequence[int] | torch.Tensor, tokens_per_image: int,
                    image_token_index: int = -200) -> int:
    """Length of ``input_ids`` after each image index is replaced by ``tokens_per_image`` embeddings."""
    ids = _as_list(input_ids)
    return len(ids) + sum(1 for t in ids if t == image_token_index) * (tokens_per_image - 1)


def seg_prediction_positions(input_ids: Sequence[int] | torch.Tensor, seg_token_id: int, tokens_per_image: int,
                             image_token_index: int = -200) -> list[int]:
    """For each ``[SEG]`` in ``input_ids`` (shape [L]), the image-expanded position whose next-token
    prediction is that ``[SEG]``: its index minus one, shifted by ``tokens_per_image - 1`` for every image
    before it. The hidden state there gives the frame's prompt embedding.

    For a generated ``[SEG]`` that is not in ``input_ids`` yet, append it first: the position is then the last
    position of the prompt, ``expanded_length(prompt) - 1``.
    """
    ids = _as_list(input_ids)
    positions: list[int] = []
    shift = 0
    for index, token in enumerate(ids):
        if token == image_token_index:
            shift += tokens_per_image - 1
        elif token == seg_token_id:
            if index == 0:
                raise ValueError("[SEG] at position 0 has no preceding position")
            positions.append(index - 1 + shift)
    return positions


def _as_list(ids: Sequence[int] | torch.Tensor) -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"expected input_ids of shape [L], got {tuple(ids.shape)}")
        return ids.tolist()
    return [int(i) for i in ids]
