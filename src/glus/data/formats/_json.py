"""JSON reading for annotation files: whole small files, and a streaming index of large ones.

Mask files are large (MeViS / ReVOS ``mask_dict.json`` hold one RLE per annotation and frame; LV-VIS
``train_instances.json`` every instance's segmentation), so readers do not ``json.load`` them. Instead
:func:`iter_members` walks the top-level object once, parsing one member value at a time with the C JSON
decoder (peak memory: one value plus a read chunk), and reports where each value sits in the file; a later
:func:`load_span` re-reads just that byte range. Arrays named in ``expand`` are walked element by element.

The file is decoded as Latin-1 while scanning, which maps every byte to one character, so character offsets
are byte offsets; JSON's own syntax is ASCII, and keys with non-ASCII bytes are re-decoded as UTF-8.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from glus import fileio
from glus.errors import GLUSError

__all__ = ["read_json", "iter_members", "Member", "load_span"]

_DECODER = json.JSONDecoder()
_WS = re.compile(r"[ \t\n\r]*")
CHUNK = 1 << 24  # 16 MiB per read while scanning


def read_json(path: str | Path, what: str = "annotation file") -> Any:
    """Load a whole (small) JSON file (:func:`glus.fileio.read_json`, worded for annotation files)."""
    return fileio.read_json(path, what)


@dataclass(frozen=True)
class Member:
    """One value found while scanning.

    Attributes:
        key: the top-level key it belongs to.
        index: position in the expanded array, or ``None`` for a plain top-level member.
        value: the parsed value.
        start, end: byte range of the value in the file (``end`` exclusive).
    """

    key: str
    index: int | None
    value: Any
    start: int
    end: int


class _Stream:
    """Latin-1 view of a binary file with a sliding buffer; offsets are absolute byte offsets."""

    def __init__(self, path: Path, chunk: int) -> None:
        self.path = path
        self.chunk = chunk
        self.f = open(path, "rb")
        self.buf = ""
        self.base = 0  # file offset of buf[0]
        self.pos = 0  # index into buf
        self.eof = False

    def close(self) -> None:
        self.f.close()

    def offset(self) -> int:
        return self.base + self.pos

    def more(self, at_least: int = 0) -> bool:
        """Append the next chunk (at least ``at_least`` bytes when available); False at end of file."""
        if self.eof:
            return False
        data = self.f.read(max(self.chunk, at_least))
        if not data:
            self.eof = True
            return False
        if self.pos:  # drop what has been consumed
            self.base += self.pos
            self.buf = self.buf[self.pos:]
            self.pos = 0
        self.buf += data.decode("latin-1")
        return True

    def peek(self) -> str:
        """Skip whitespace; return the next character, or '' at end of file."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return ""

    def fail(self, message: str, at: int | None = None) -> GLUSError:
        return GLUSError(f"invalid JSON at byte {self.offset() if at is None else at}: {message}", self.path)

    def expect(self, ch: str, context: str) -> None:
        got = self.peek()
        if got != ch:
            raise self.fail(f"expected '{ch}' {context}, found {repr(got) if got else 'end of file'}")
        self.pos += 1

    def value(self, context: str) -> tuple[Any, int, int]:
        """Parse the value at the cursor; return it with its absolute byte range."""
        if not self.peek():
            raise self.fail(f"expected a value {context}, found end of file")
        while True:
            try:
                obj, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                # Most likely the value runs past the buffer: read more (doubling, so a long value costs
                # linear time) and parse again from its start. At end of file it is a real error.
                if self.more(at_least=len(self.buf)):
                    continue
                raise self.fail(f"{exc.msg} {context}", at=self.base + exc.pos) from None
            except RecursionError:
                raise self.fail(f"nesting too deep {context}") from None
            if end == len(self.buf) and self.more():
                continue  # a number may go on in the next chunk
            start = self.offset()
            raw = self.buf[self.pos:end]
            self.pos = end
            if not raw.isascii():  # the Latin-1 view mangles UTF-8 text: parse the value's bytes properly
                try:
                    obj = json.loads(raw.encode("latin-1").decode("utf-8"))
                except UnicodeDecodeError as exc:
                    raise self.fail(f"not UTF-8 text ({exc.reason}) {context}", at=start + exc.start) from None
            return obj, start, self.base + end

    def key(self) -> str:
        if self.peek() != '"':
            raise self.fail("object keys must be strings")
        obj, _, _ = self.value("as an object key")
        return obj


def iter_members(path: str | Path, expand: frozenset[str] | set[str] = frozenset(),
                 chunk: int = CHUNK) -> Iterator[Member]:
    """Stream the members of the top-level JSON object in ``path``.

    Yields one :class:`Member` per top-level key, except that a key in ``expand`` whose value is an array
    yields one member per element (``index`` set) and never holds the whole array. Invalid JSON, or a top
    level that is not an object, raises :class:`GLUSError` with the byte offset.
    """
    path = Path(path)
    try:
        stream = _Stream(path, chunk)
    except FileNotFoundError:
        raise GLUSError("annotation file not found", path) from None
    except IsADirectoryError:
        raise GLUSError("annotation file is a folder, not a JSON file", path) from None
    try:
        stream.expect("{", "at the start of the file (the top level must be a JSON object)")
        if stream.peek() == "}":
            stream.pos += 1
        else:
            while True:
                key = stream.key()
                stream.expect(":", f"after key {key!r}")
                if key in expand and stream.peek() == "[":
                    stream.pos += 1
                    index = 0
                    if stream.peek() == "]":
                        stream.pos += 1
                    else:
                        while True:
                            value, start, end = stream.value(f"in {key!r} item {index}")
                            yield Member(key, index, value, start, end)
                            index += 1
                            sep = stream.peek()
                            if sep == "]":
                                stream.pos += 1
                                break
                            stream.expect(",", f"between items of {key!r}")
                else:
                    value, start, end = stream.value(f"for key {key!r}")
                    yield Member(key, None, value, start, end)
                if stream.peek() == "}":
                    stream.pos += 1
                    break
                stream.expect(",", f"after the value of {key!r}")
        if stream.peek():
            raise stream.fail("extra data after the top-level object")
    finally:
        stream.close()


def load_span(path: Path, start: int, end: int) -> Any:
    """Parse the JSON value stored at bytes ``[start, end)`` of ``path`` (found by :func:`iter_members`)."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read(end - start)
    except FileNotFoundError:
        raise GLUSError("annotation file disappeared after it was indexed", path) from None
    try:
        return json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GLUSError(f"annotation file changed after it was indexed (bytes {start}-{end} no longer hold "
                        f"a JSON value)", path) from None
