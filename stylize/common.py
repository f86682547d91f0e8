"""Small things both packages use, each written once: exit codes, one-line messages (pydantic's
validation errors among them), short hashes, atomic file writes. Pure Python (``pipeline``
builds on these; ``stylize`` never imports ``pipeline``)."""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import BaseModel, ValidationError

# The exit codes of the ``stylize`` command (pipeline/errors.py says when each applies).
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INFRA = 0, 1, 2, 3
DISTRIBUTION = "gatys-stylize"  # on PyPI; the packages are stylize and pipeline
TMP_PREFIX = ".tmp-"  # temporary files of atomic writes: hidden, never taken for outputs


class StylizeError(Exception):
    """The base of every error the ``stylize`` command reports in one line: its exit code
    (2: usage or configuration, found before work; 3: infrastructure, resumable) and whether
    its line ends with how to resume. The engine and the pipeline raise; the command shell
    (``pipeline.cli``, ``pipeline.shell``) prints (one ``except``). The engine never prints,
    parses a command line or sets up logging handlers: it raises and logs."""

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


# ------------------------------------------------------------------- validation messages
# One formatter of pydantic's errors for every model of both packages (the engine's options,
# the job file): the words below are written once.

# pydantic's error types, as the noun of "expected ..."
TYPE_NOUNS = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}
BOUNDS = {
    "greater_than_equal": ">=",
    "greater_than": ">",
    "less_than_equal": "<=",
    "less_than": "<",
}  # pydantic's bound errors, as operators
# The errors of a union's branches that only say "not this type": merged into one line, or
# dropped when another branch matched and reports deeper down. (A float given for an integer
# is said alone: it names the one branch that nearly matched.)
_BRANCH_MISSES = (set(TYPE_NOUNS) - {"int_from_float"}) | {"literal_error"}
# pydantic names union members and validators in error locations ("int", "literal['auto']",
# "function-after[...]"), and models by their class: not keys, so not shown to the user.
_TYPE_TAG = re.compile(r"^(int|float|str|bool|none|constrained-\w+|[a-z-]+\[.*\])$")


def literal_values(err: Mapping[str, Any]) -> str:
    """The allowed values of a pydantic literal_error, as ``a, b, c``."""
    expected = str((err.get("ctx") or {}).get("expected", ""))
    return expected.replace(" or ", ", ").replace("'", "")


def describe_validation_errors(
    error: ValidationError,
    model: type[BaseModel],
    *,
    flags: bool = False,
    word: Callable[[str, Mapping[str, Any]], str | None] | None = None,
) -> list[str]:
    """One line per problem of ``error`` (pydantic's, validating ``model``): where, what is
    wrong, what was given and what is allowed. Where is a key path for a file's reader
    (``stylize.size: ...``) or, with ``flags``, the option for a command-line user (``--size:
    ...``, the path's first key; pydantic's wording and the value as typed). The errors of one
    key (a union's branches) make one line. ``word(option, err)`` may word one error its own
    way (the engine names its presets, layers and devices); None: the usual words."""
    tags = _model_names(model)
    by_path: dict[str, list[Mapping[str, Any]]] = {}
    for err in error.errors(include_url=False):
        keys = [str(p) for p in err["loc"]]
        path = ".".join(p for p in keys if p not in tags and not _TYPE_TAG.match(p))
        by_path.setdefault(path, []).append(err)
    lines = []
    for path, errs in by_path.items():
        if any(e["type"] == "extra_forbidden" for e in errs):
            lines.append(_unknown(path, model, flags))
            continue
        specific = [e for e in errs if e["type"] not in _BRANCH_MISSES]
        if specific:  # a union whose matching branch said what is wrong: only that
            errs = specific
        elif any(p.startswith(f"{path}.") for p in by_path if p != path) or (
            not path and len(by_path) > 1
        ):
            continue  # the value matched another branch, which reports deeper down
        lines.append(_problem(path, errs, flags, word))
    return lines


def _problem(
    path: str,
    errs: list[Mapping[str, Any]],
    flags: bool,
    word: Callable[[str, Mapping[str, Any]], str | None] | None,
) -> str:
    """The line of one key's errors."""
    name = path.split(".")[0] if flags else path
    got = _given(errs[0], flags)
    msg = word(name, errs[0]) if word else None
    if msg is None and got is not None and all(e["type"] == "literal_error" for e in errs):
        msg = f"{got} is not allowed; allowed: {', '.join(literal_values(e) for e in errs)}"
    elif msg is None:
        msg = _what(errs, flags) + (f", got {got}" if got is not None else "")
    if flags and not name and re.match(r"^[a-z_]+: ", msg):  # a check across options
        name, msg = msg.split(": ", 1)  # names its own
    if flags:
        return f"--{name.replace('_', '-')}: {msg}" if name else msg
    return f"{path}: {msg}" if path else msg


def _given(err: Mapping[str, Any], flags: bool) -> str | None:
    """The value given, as the message quotes it (None: not quoted): on a command line what
    was typed, but for a value error (its message says); in a file a single value, not a
    mapping or a list (the file shows it)."""
    if flags:
        return repr(err.get("input")) if err["type"] != "value_error" else None
    got = err.get("input")
    if err["type"] in ("missing", "extra_forbidden") or isinstance(got, (dict, list)):
        return None
    if err["type"] == "value_error" and "got " in str(err.get("msg", "")):
        return None  # the check's own message quotes what it was given
    return None if got is None else repr(got)


def _what(errs: list[Mapping[str, Any]], flags: bool) -> str:
    """What is wrong, from the errors of one key (several for a union)."""
    if all(e["type"] in TYPE_NOUNS or e["type"] == "literal_error" for e in errs):
        nouns = [
            literal_values(e) if e["type"] == "literal_error" else TYPE_NOUNS[e["type"]]
            for e in errs
        ]
        return "expected " + " or ".join(dict.fromkeys(nouns))
    file_words = {
        "missing": "missing (required)",
        "too_short": "must not be empty",
        "string_too_short": "expected a non-empty string",
    }
    texts = []
    for err in errs:
        kind, ctx = err["type"], err.get("ctx") or {}
        if kind in file_words and not flags:
            texts.append(file_words[kind])
        elif kind in BOUNDS:
            texts.append(f"must be {BOUNDS[kind]} {next(iter(ctx.values()), '')}")
        else:
            texts.append(str(err["msg"]).removeprefix("Value error, "))
    return " or ".join(dict.fromkeys(texts))


def _unknown(path: str, model: type[BaseModel], flags: bool) -> str:
    """An unknown key (or option): the nearest allowed one, else all of them."""
    if flags:  # an option: a key of the model itself
        name, options = path.split(".")[0], list(model.model_fields)
        near = near_miss(name, options)
        why = f"did you mean {near!r}?" if near else f"allowed: {', '.join(options)}"
        return f"--{name.replace('_', '-')}: unknown option {name!r}; {why}"
    *parent, key = path.split(".")
    allowed = _keys_at(model, parent)
    if allowed is None:
        return f"unknown key {path!r}"
    near = near_miss(key, allowed)
    hint = f"; did you mean {'.'.join([*parent, near])!r}?" if near else ""
    where = f" in {'.'.join(parent)}" if parent else ""
    return f"unknown key {path!r}{hint} (allowed keys{where}: {', '.join(allowed)})"


def _keys_at(model: Any, parts: list[str]) -> list[str] | None:
    """Field names of the (sub)model reached by ``parts``; None where keys are free."""
    for p in parts:
        fields = getattr(model, "model_fields", None)
        if fields is None or p not in fields:
            return None  # a mapping of free keys (styles, storage_options) or a list index
        model = _model_in(fields[p].annotation)
    fields = getattr(model, "model_fields", None)
    return list(fields) if fields else None


def _model_in(annotation: Any) -> Any:
    """The first pydantic model inside ``annotation`` (through unions and lists)."""
    if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _model_names(model: Any, seen: set[str] | None = None) -> set[str]:
    """The class names of every model in ``model``'s fields, deeply: how pydantic names a
    union's model branch in an error's location."""
    seen = set() if seen is None else seen
    for field in (getattr(model, "model_fields", None) or {}).values():
        for arg in _flatten(field.annotation):
            if isinstance(arg, type) and hasattr(arg, "model_fields") and arg.__name__ not in seen:
                seen.add(arg.__name__)
                _model_names(arg, seen)
    return seen


def _flatten(annotation: Any) -> list[Any]:
    """``annotation`` and every type argument inside it."""
    out = [annotation]
    for arg in getattr(annotation, "__args__", ()) or ():
        out += _flatten(arg)
    return out
