"""The slow, legacy LLaMA tokenizer GLUS was trained with, rebuilt on ``sentencepiece``.

The released GLUS checkpoints were trained and evaluated with transformers 4.31's ``LlamaTokenizer``
(``use_fast=False``, ``legacy=True``) plus the added tokens ``[SEG]``, ``<im_start>`` and ``<im_end>``.
Later transformers versions tokenise the same text differently (e.g. an extra ``▁`` before added tokens), and
the model only works on the ids it was trained on, so glus reproduces the legacy ids exactly:

1. the text is split on the added and special tokens (``<s>``, ``</s>``, ``<unk>``, ``[SEG]`` ...), the longest
   token winning where several match at the same place;
2. whitespace next to an *added* token is eaten on both sides (the left text is right-stripped, the right text
   left-stripped), because transformers 4.31 strips around every no-split token that is not an ``AddedToken``
   object; the special tokens of ``special_tokens_map.json`` carry their own ``lstrip`` / ``rstrip`` flags
   (all false for LLaMA, so ``"[SEG].</s>USER"`` keeps its text as is);
3. every remaining text chunk is encoded by sentencepiece on its own, so each chunk gets sentencepiece's dummy
   prefix ``▁``: ``"[SEG]."`` becomes ``[SEG]``, ``▁``, ``.``; text after ``</s>`` starts with a fresh ``▁``;
4. ``<s>`` (BOS) is prepended when ``add_bos_token`` is set (the default), ``</s>`` appended when
   ``add_eos_token`` is set.

The folder layout (``tokenizer.model``, ``added_tokens.json``, ``special_tokens_map.json``,
``tokenizer_config.json``) is the one ``LlamaTokenizer.save_pretrained`` writes; :meth:`save_pretrained` writes
the same files back.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import sentencepiece as spm

from glus.errors import GLUSError
from glus.fileio import atomic_write_bytes, read_json_object

logger = logging.getLogger(__name__)

SP_MODEL_FILE = "tokenizer.model"
ADDED_TOKENS_FILE = "added_tokens.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

# The special-token attributes of a transformers tokenizer, in the order transformers lists them.
SPECIAL_TOKEN_ATTRIBUTES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                            "mask_token")


@dataclass(frozen=True)
class SpecialToken:
    """One entry of ``special_tokens_map.json``: its text and whether it eats whitespace on either side."""

    content: str
    lstrip: bool = False
    rstrip: bool = False
    normalized: bool = True

    @classmethod
    def from_json(cls, value: Any, where: Path, plain_string_strips: bool = False) -> "SpecialToken":
        """Parse a JSON entry. A bare string becomes a token without flags: LlamaTokenizer wraps its
        bos/eos/unk/pad strings as non-stripping ``AddedToken`` s, while other bare strings (additional
        special tokens) strip both sides in transformers 4.31 (``plain_string_strips=True``)."""
        if isinstance(value, str):
            return cls(value, plain_string_strips, plain_string_strips)
        if isinstance(value, dict) and isinstance(value.get("content"), str):
            return cls(value["content"], bool(value.get("lstrip", False)), bool(value.get("rstrip", False)),
                       bool(value.get("normalized", True)))
        raise GLUSError(f"special token entry {value!r} is neither a string nor an object with 'content'", where)


class GLUSTokenizer:
    """Legacy LLaMA tokenizer with GLUS's added tokens (ids identical to transformers 4.31 ``LlamaTokenizer``).

    Build it with :meth:`from_pretrained` from a checkpoint folder. ``len(tokenizer)`` is the sentencepiece
    vocabulary plus the added tokens (703 for the tiny reference, 32000 + added for LLaMA-7B).
    """

    def __init__(
        self,
        sp_model_proto: bytes,
        added_tokens: dict[str, int] | None = None,
        special_tokens: dict[str, SpecialToken] | None = None,
        additional_special_tokens: Sequence[SpecialToken] = (),
        add_bos_token: bool = True,
        add_eos_token: bool = False,
        tokenizer_config: dict[str, Any] | None = None,
        seg_token: str = "[SEG]",
        im_start_token: str = "<im_start>",
        im_end_token: str = "<im_end>",
        source: str | Path | None = None,
    ) -> None:
        self._source = Path(source) if source is not None else None
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(sp_model_proto)
        except (RuntimeError, OSError) as exc:  # sentencepiece raises RuntimeError on a corrupt proto
            raise GLUSError(f"not a sentencepiece model ({exc})", self._sp_path()) from None
        self._sp_proto = bytes(sp_model_proto)
        self.add_bos_token = add_bos_token
        self.add_eos_token = add_eos_token
        self.tokenizer_config = dict(tokenizer_config or {})
        self.seg_token, self.im_start_token, self.im_end_token = seg_token, im_start_token, im_end_token

        self.special_tokens: dict[str, SpecialToken] = dict(special_tokens or {})
        self.additional_special_tokens: list[SpecialToken] = list(additional_special_tokens)
        self.added_tokens_encoder: dict[str, int] = {}
        self.added_tokens_decoder: dict[int, str] = {}
        # transformers 4.31 assigns added tokens consecutive ids after the sentencepiece vocabulary, in
        # the order of their saved ids, and refuses a file whose ids skip (so do we).
        for token, index in sorted((added_tokens or {}).items(), key=lambda item: item[1]):
            if self._sp_id(token) is not None:
                # Already a sentencepiece piece: transformers skips it too, the piece's id stands.
                logger.debug("added token %r is a sentencepiece piece; keeping id %d", token, self._sp_id(token))
                continue
            expected = len(self)
            if index != expected:
                raise GLUSError(f"added token {token!r} has id {index} but the next free id is {expected}",
                                self._source / ADDED_TOKENS_FILE if self._source else None)
            self.added_tokens_encoder[token] = index
            self.added_tokens_decoder[index] = token
        self._rebuild_splitter()

    # ------------------------------------------------------------------ loading and saving

    @classmethod
    def from_pretrained(
        cls,
        folder: str | Path,
        *,
        seg_token: str = "[SEG]",
        im_start_token: str = "<im_start>",
        im_end_token: str = "<im_end>",
    ) -> "GLUSTokenizer":
        """Read ``tokenizer.model`` and the three JSON files (the last three are optional) from ``folder``."""
        folder = Path(folder)
        sp_path = folder / SP_MODEL_FILE
        if not sp_path.is_file():
            raise GLUSError("missing sentencepiece model (the slow LLaMA tokenizer's tokenizer.model)", sp_path)
        config = _read_json(folder / TOKENIZER_CONFIG_FILE, default={})
        if config.get("legacy", True) is False:
            raise GLUSError("legacy=false tokenisation is not supported; GLUS checkpoints use the legacy "
                            "LLaMA tokenizer", folder / TOKENIZER_CONFIG_FILE)
        special_map = _read_json(folder / SPECIAL_TOKENS_MAP_FILE, default={})
        added = _read_json(folder / ADDED_TOKENS_FILE, default={})
        if not all(isinstance(k, str) and isinstance(v, int) for k, v in added.items()):
            raise GLUSError("expected an object mapping token strings to integer ids", folder / ADDED_TOKENS_FILE)

        specials: dict[str, SpecialToken] = {}
        # tokenizer_config.json holds the defaults, special_tokens_map.json overrides them (transformers' order).
        for source, path in ((config, folder / TOKENIZER_CONFIG_FILE), (special_map, folder / SPECIAL_TOKENS_MAP_FILE)):
            for attr in SPECIAL_TOKEN_ATTRIBUTES:
                if source.get(attr) is not None:
                    specials[attr] = SpecialToken.from_json(source[attr], path)
        # LlamaTokenizer's constructor defaults.
        specials.setdefault("bos_token", SpecialToken("<s>"))
        specials.setdefault("eos_token", SpecialToken("</s>"))
        specials.setdefault("unk_token", SpecialToken("<unk>"))
        additional = [SpecialToken.from_json(v, folder / SPECIAL_TOKENS_MAP_FILE, plain_string_strips=True)
                      for v in special_map.get("additional_special_tokens", [])]
        return cls(
            sp_path.read_bytes(),
            added_tokens=added,
            special_tokens=specials,
            additional_special_tokens=additional,
            add_bos_token=bool(config.get("add_bos_token", True)),
            add_eos_token=bool(config.get("add_eos_token", False)),
            tokenizer_config=config,
            seg_token=seg_token,
            im_start_token=im_start_token,
            im_end_token=im_end_token,
            source=folder,
        )

    def save_pretrained(self, folder: str | Path) -> list[Path]:
        """Write the four tokenizer files into ``folder`` (each atomically); return their paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        special_map: dict[str, Any] = {}
        for attr in SPECIAL_TOKEN_ATTRIBUTES:
            if attr in self.special_tokens:
                tok = self.special_tokens[attr]
                # pad is stored as a bare string when it is an alias (LISA sets pad_token = unk_token).
                special_map[attr] = tok.content if attr == "pad_token" else _special_json(tok)
        if self.additional_special_tokens:
            special_map["additional_special_tokens"] = [_special_json(t) for t in self.additional_special_tokens]
        config = dict(self.tokenizer_config)
        config.update({"add_bos_token": self.add_bos_token, "add_eos_token": self.add_eos_token,
                       "legacy": True, "tokenizer_class": "LlamaTokenizer"})
        for attr in ("bos_token", "eos_token", "unk_token"):
            if attr in self.special_tokens:
                config[attr] = {"__type": "AddedToken", **_special_json(self.special_tokens[attr])}
        written = [
            _write_atomic(folder / SP_MODEL_FILE, self._sp_proto),
            _write_atomic(folder / ADDED_TOKENS_FILE, _dump_json(self.added_tokens_encoder)),
            _write_atomic(folder / SPECIAL_TOKENS_MAP_FILE, _dump_json(special_map)),
            _write_atomic(folder / TOKENIZER_CONFIG_FILE, _dump_json(config)),
        ]
        return written

    def add_tokens(self, tokens: Iterable[str]) -> int:
        """Append new tokens (as LISA does for ``[SEG]``); return how many were new."""
        added = 0
        for token in tokens:
            if token in self.added_tokens_encoder or self._sp_id(token) is not None:
                continue
            index = len(self)
            self.added_tokens_encoder[token] = index
            self.added_tokens_decoder[index] = token
            added += 1
        if added:
            self._rebuild_splitter()
        return added

    # ------------------------------------------------------------------ vocabulary

    def __len__(self) -> int:
        return self.sp.get_piece_size() + len(self.added_tokens_encoder)

    @property
    def sp_vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def token_to_id(self, token: str) -> int:
        """Id of one whole token (an added token or a sentencepiece piece); GLUSError if unknown."""
        if token in self.added_tokens_encoder:
            return self.added_tokens_encoder[token]
        sp_id = self._sp_id(token)
        if sp_id is None:
            raise GLUSError(f"token {token!r} is not in the vocabulary", self._source)
        return sp_id

    def _special_id(self, attr: str) -> int | None:
        tok = self.special_tokens.get(attr)
        return None if tok is None else self.token_to_id(tok.content)

    @property
    def bos_token_id(self) -> int:
        return self._special_id("bos_token")

    @property
    def eos_token_id(self) -> int:
        return self._special_id("eos_token")

    @property
    def unk_token_id(self) -> int:
        return self._special_id("unk_token")

    @property
    def pad_token_id(self) -> int:
        """The pad id; LISA/GLUS set ``pad_token = unk_token``, so an absent pad falls back to unk."""
        pad = self._special_id("pad_token")
        return self.unk_token_id if pad is None else pad

    @property
    def seg_token_id(self) -> int:
        return self.token_to_id(self.seg_token)

    @property
    def im_start_id(self) -> int:
        return self.token_to_id(self.im_start_token)

    @property
    def im_end_id(self) -> int:
        return self.token_to_id(self.im_end_token)

    @property
    def all_special_tokens(self) -> list[str]:
        """Texts of the special tokens (bos, eos, unk, pad, additional), without duplicates."""
        seen: dict[str, None] = {}
        for tok in [*self.special_tokens.values(), *self.additional_special_tokens]:
            seen.setdefault(tok.content, None)
        return list(seen)

    @property
    def all_special_ids(self) -> list[int]:
        return [self.token_to_id(t) for t in self.all_special_tokens]

    # ------------------------------------------------------------------ encoding

    def tokenize(self, text: str) -> list[str]:
        """Token strings of ``text`` (no BOS), with the legacy splitting and stripping rules."""
        return self.convert_ids_to_tokens(self._encode_body(text))

    def encode(self, text: str, add_bos: bool | None = None, add_eos: bool | None = None) -> list[int]:
        """Token ids of ``text``: ``[bos] + body (+ [eos])``; defaults follow ``tokenizer_config.json``."""
        ids = self._encode_body(text)
        if self.add_bos_token if add_bos is None else add_bos:
            ids = [self.bos_token_id, *ids]
        if self.add_eos_token if add_eos is None else add_eos:
            ids = [*ids, self.eos_token_id]
        return ids

    def _encode_body(self, text: str) -> list[int]:
        pieces = self._splitter.split(text) if self._splitter is not None else [text]
        # re.split with one capture group alternates text, token, text, ...: odd positions are tokens.
        for i in range(1, len(pieces), 2):
            left_strip, right_strip = self._strip_rule[pieces[i]]
            if right_strip and i + 1 < len(pieces) and pieces[i + 1]:
                pieces[i + 1] = pieces[i + 1].lstrip()
            if left_strip and pieces[i - 1]:
                pieces[i - 1] = pieces[i - 1].rstrip()
        ids: list[int] = []
        for i, piece in enumerate(pieces):
            if i % 2 == 1:
                ids.append(self.token_to_id(piece))
            elif piece:  # chunks emptied by stripping are skipped, as in transformers
                ids.extend(self.sp.encode(piece, out_type=int))
        return ids

    def _rebuild_splitter(self) -> None:
        # No-split tokens: every added token and every special token. Added tokens that are not special
        # strip both neighbours; special tokens follow their own lstrip/rstrip flags.
        rules: dict[str, tuple[bool, bool]] = {t: (True, True) for t in self.added_tokens_encoder}
        for tok in [*self.special_tokens.values(), *self.additional_special_tokens]:
            rules[tok.content] = (tok.lstrip, tok.rstrip)
        self._strip_rule = rules
        if not rules:
            self._splitter = None
            return
        # Longest first, so that at one position the longest token wins (transformers' trie does the same).
        alternatives = sorted(rules, key=lambda t: (-len(t), t))
        self._splitter = re.compile("(" + "|".join(re.escape(t) for t in alternatives) + ")")

    # ------------------------------------------------------------------ decoding

    def convert_ids_to_tokens(self, ids: Sequence[int] | int, skip_special_tokens: bool = False) -> Any:
        """Token string(s) of id(s); ids outside the vocabulary (e.g. the image index -200) are an error."""
        if isinstance(ids, int):
            return self._id_to_token(ids)
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self._id_to_token(int(i)) for i in ids if int(i) not in special]

    def convert_tokens_to_ids(self, tokens: Sequence[str] | str) -> Any:
        if isinstance(tokens, str):
            return self.token_to_id(tokens)
        return [self.token_to_id(t) for t in tokens]

    def _id_to_token(self, index: int) -> str:
        if index in self.added_tokens_decoder:
            return self.added_tokens_decoder[index]
        if 0 <= index < self.sp.get_piece_size():
            return self.sp.id_to_piece(index)
        raise ValueError(f"token id {index} is outside the vocabulary [0, {len(self)})")

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` as transformers 4.31's slow ``LlamaTokenizer.decode`` writes it.

        Added tokens are joined to their neighbours with one space, special tokens are kept verbatim
        (``"... [SEG] .</s>USER: ..."``), no clean-up of spaces (``clean_up_tokenization_spaces=False``).
        """
        tokens = self.convert_ids_to_tokens([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        sub_texts: list[str] = []
        current: list[str] = []
        for token in tokens:
            if token in self.added_tokens_encoder:
                if current:
                    sub_texts.append(self._tokens_to_string(current))
                    current = []
                sub_texts.append(token)
            else:
                current.append(token)
        if current:
            sub_texts.append(self._tokens_to_string(current))
        return " ".join(sub_texts)

    def _tokens_to_string(self, tokens: Sequence[str]) -> str:
        specials = set(self.all_special_tokens)
        out, pending, prev_special = "", [], False
        for i, token in enumerate(tokens):
            if token in specials:
                if not prev_special and i != 0:
                    out += " "
                out += self.sp.decode_pieces(pending) + token
                pending, prev_special = [], True
            else:
                pending.append(token)
                prev_special = False
        return out + self.sp.decode_pieces(pending)

    # ------------------------------------------------------------------ helpers

    def _sp_id(self, token: str) -> int | None:
        index = self.sp.piece_to_id(token)
        # piece_to_id answers unk for unknown pieces; only the real "<unk>" piece may map there.
        if index == self.sp.unk_id() and token != self.sp.id_to_piece(index):
            return None
        return index

    def _sp_path(self) -> Path | None:
        return self._source / SP_MODEL_FILE if self._source is not None else None

    def __repr__(self) -> str:
        return (f"GLUSTokenizer(vocab={len(self)}, sp={self.sp_vocab_size}, "
                f"added={self.added_tokens_encoder}, source={str(self._source) if self._source else None})")


def _read_json(path: Path, default: dict[str, Any]) -> dict[str, Any]:
    return read_json_object(path, path.name) if path.is_file() else dict(default)


def _special_json(tok: SpecialToken) -> dict[str, Any]:
    return {"content": tok.content, "lstrip": tok.lstrip, "normalized": tok.normalized, "rstrip": tok.rstrip,
            "single_word": False}


def _dump_json(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def _write_atomic(path: Path, data: bytes) -> Path:
    atomic_write_bytes(path, data)
    return path
