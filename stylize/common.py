"""Small things both packages use, each written once: exit codes, one-line messages, short
hashes, atomic file writes. Pure Python (``pipeline`` builds on these; ``stylize`` never
imports ``pipeline``)."""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import uuid
from typing import Iterable

# The exit codes of the ``stylize`` command (pipeline/errors.py says when each applies).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INFRA = 0, 1, 2, 3
DISTRIBUTION = "gatys-stylize"  # on PyPI; the packages are stylize and pipeline
TMP_PREFIX = ".tmp-"  # temporary files of atomic writes: hidden, never taken for outputs


class StylizeError(Exception):
    """The base of every error the ``stylize`` command reports in one line: its exit code
    (2: usage or configuration, found before work; 3: infrastructure, resumable) and whether
    its line ends with how to resume. The engine and the pipeline raise; the command shell
    prints (one ``except``)."""

    exit_code: int = EXIT_USAGE
    resumable: bool = False  # "run the same command to resume once it is back"


def one_line(detail: object, limit: int = 500) -> str:
    """Any text (an exception's message, several lines) as one line of at most ``limit``."""
    return " ".join(str(detail).split())[:limit]


# C0/C1 controls (newlines, ESC of terminal sequences, ...), line/paragraph separators and the
# bidirectional overrides that make text display in another order than it is stored
_CONTROLS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b``,
    ``\\u202e``): a name taken from data can neither start a line of its own nor recolour,
    move or reorder what a terminal shows."""

    def esc(m: re.Match[str]) -> str:
        c = m.group()
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(
            c, f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
        )

    return _CONTROLS.sub(esc, text)


def describe_error(e: BaseException, limit: int = 500) -> str:
    """``Type: message`` on one line: what a row or a log line says about an exception."""
    return f"{type(e).__name__}: {one_line(e) or '(no message)'}"[:limit]


def near_miss(word: str, choices: Iterable[str]) -> str | None:
    """The choice that ``word`` most likely misspells (or abbreviates), if any: what a
    "did you mean" names."""
    choices = list(choices)
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return (
        close[0] if close else next((c for c in choices if c.startswith(word) or word in c), None)
    )


def short_hash(*parts: str, n: int = 16) -> str:
    """Hex digest of ``parts`` (NUL-separated; non-UTF-8 names hash by their bytes)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8", "surrogateescape"))
        h.update(b"\0")
    return h.hexdigest()[:n]


def write_atomic(path: str | os.PathLike[str], data: bytes, exclusive: bool = False) -> None:
    """Write a whole local file: a temporary name beside it, fsync, rename. A crash never
    leaves a partial file under the final name; the temporary is removed on any failure.
    ``exclusive``: FileExistsError if ``path`` exists (a hard link, never an overwrite)."""
    path = os.fspath(path)
    parent, name = os.path.split(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    # the temporary name stays within 255 bytes whatever the final name's length
    tail = os.fsencode(name)[-200:].decode("utf-8", "ignore")
    tmp = os.path.join(parent, f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{tail}")
    try:
        with open(tmp, "xb") as f:  # not mkstemp: its 0600 mode would stick
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            os.link(tmp, path)
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
