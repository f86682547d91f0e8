"""What may be shown: storage options, URIs and messages with their secrets taken out.

Everything that leaves the pipeline as text (run.json, manifest columns, log lines, error
messages) passes through here first. Redaction is by allowlist, not by guessing key names:

- ``redact_options`` keeps only storage-option keys known to be harmless (region, anon,
  timeouts, an endpoint URL without its ``user:pass@``...); every other value becomes ``***``,
  nested ``client_kwargs``/``config_kwargs``/``headers`` included.
- ``strip_userinfo`` removes ``user:pass@`` from a URI (the URI stays usable to find the file);
  ``redact_uri`` also masks credential query parameters (presigned URLs, SAS tokens).
- ``redact_text`` does both for every URL inside free text (tracebacks, error messages), masks
  the secret values it is given (``secret_values(options)``), and returns valid UTF-8
  (undecodable bytes of file names shown as ``\\xNN``).

Imports nothing beyond the standard library, so any process can use it cheaply.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote, unquote

from stylize.common import escape_controls  # noqa: F401 - re-exported: lines shown to people

MASK = "***"
MIN_SECRET_LEN = 4  # shorter values would mask ordinary words and digits in messages
MIN_PIECE_LEN = 8  # pieces of a compound secret ("Bearer X", "a=X;b=Y") masked on their own
_PIECES = re.compile(r"[\s;&,]+")

# Storage-option keys whose values are kept (compared lower-case, at any depth). Everything
# else is masked. A key here names a setting, never a credential.
SAFE_KEYS = frozenset(
    {
        # s3fs / botocore
        "region",
        "region_name",
        "anon",
        "use_ssl",
        "verify",
        "requester_pays",
        "version_aware",
        "default_block_size",
        "default_cache_type",
        "default_fill_cache",
        "cache_regions",
        "endpoint_url",
        "endpoint",
        "addressing_style",
        "signature_version",
        "max_pool_connections",
        "connect_timeout",
        "read_timeout",
        "retries",
        "max_attempts",
        "total_max_attempts",
        "mode",
        "use_dualstack_endpoint",
        "use_accelerate_endpoint",
        "use_fips_endpoint",
        "tcp_keepalive",
        "parameter_validation",
        "acl",
        "serversideencryption",
        "storageclass",
        "profile",
        "profile_name",
        "fixed_upload_size",
        "skip_instance_cache",
        "use_listings_cache",
        "listings_expiry_time",
        "max_paths",
        "asynchronous",
        # gcsfs
        "project",
        "access",
        "consistency",
        "requests_timeout",
        "timeout",
        "block_size",
        # adlfs
        "account_name",
        # HTTP headers that carry no credential
        "user-agent",
        "user_agent",
        "content-type",
        "accept",
    }
)
# Mappings under these keys are walked (their safe keys kept), not masked whole.
CONTAINER_KEYS = frozenset(
    {"client_kwargs", "config_kwargs", "headers", "retries", "s3", "s3_additional_kwargs", "config"}
)
# ``token`` is a credential unless it names one of gcsfs's ways to find credentials.
SAFE_TOKENS = frozenset({"anon", "google_default", "cloud", "browser", "cache"})

_SCHEME = r"[A-Za-z][A-Za-z0-9+.\-]*://"
# user:pass@ inside the authority (no '/' in it): the last '@' before the path ends it.
_USERINFO = r"[^\s/?#'\"<>\[\]]*@"
# user:pass@ where the password holds an unescaped '/' (an AWS secret pasted into a URI):
# "s3://KEY:ab/cd@bucket/x". A ':' not followed by a port number is no host, so text up to
# the next '@' is taken as credentials ('http://host:9000/a@2x.png' is left alone).
_USERINFO_SLASH = r"[^\s/?#@'\"<>:\[\]]*:(?!\d*(?:[/?#\s'\"<>]|$))[^\s'\"<>@]*@"
_URI_USERINFO = re.compile(rf"^({_SCHEME})(?:{_USERINFO}|{_USERINFO_SLASH})")
_TEXT_USERINFO = re.compile(rf"(?<![A-Za-z0-9+.\-])({_SCHEME})(?:{_USERINFO}|{_USERINFO_SLASH})")
# Query parameters that carry credentials: S3/GCS presigned URLs, Azure SAS, API tokens.
_QUERY_SECRET = re.compile(
    r"([?&;](?:x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|"
    r"x-goog-credential|googleaccessid|signature|sig|token|access_token|id_token|api_key|"
    r"apikey|key|secret|client_secret|password|passwd|pwd|code|auth|authorization)=)"
    r"[^&#\s'\"<>]*",
    re.IGNORECASE,
)


def strip_userinfo(uri: str) -> str:
    """``uri`` without ``user:pass@``: ``s3://KEY:SECRET@bucket/a.jpg`` -> ``s3://bucket/a.jpg``,
    ``https://u:p@host/x`` -> ``https://host/x``. Local paths come back unchanged (also with
    surrogate-escaped bytes in them)."""
    if "://" not in uri or "@" not in uri:
        return uri
    return _URI_USERINFO.sub(r"\1", uri, count=1)


def redact_uri(uri: str) -> str:
    """:func:`strip_userinfo`, and credential query parameters (``X-Amz-Signature``, ``sig``,
    ``token``, ...) with their values replaced by ``***``."""
    uri = strip_userinfo(uri)
    return _QUERY_SECRET.sub(rf"\1{MASK}", uri) if "=" in uri else uri


def show_undecodable(text: str, byte: str = "\\x{:02x}", other: str = "\ufffd") -> str:
    """``text`` as valid UTF-8: bytes of a file name that were not UTF-8 (surrogate escapes,
    as ``os.fsdecode`` gives them) written with ``byte`` (``\\xNN`` for messages, ``%XX``
    for file names); other lone surrogates as ``other``."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    return "".join(
        byte.format(ord(c) - 0xDC00)
        if "\udc80" <= c <= "\udcff"
        else other
        if "\ud800" <= c <= "\udfff"
        else c
        for c in text
    )


def _userinfo_secrets(value: str) -> list[str]:
    """The user and password that :func:`strip_userinfo` would remove from ``value``."""
    out = []
    for m in _TEXT_USERINFO.finditer(value):
        userinfo = value[m.end(1) : m.end() - 1]
        out += [userinfo, userinfo.split(":", 1)[-1]]  # the user name is often a host name
    for m in _QUERY_SECRET.finditer(value):
        out.append(value[m.end(1) : m.end()])
    return out


def _walk(value: Any, key: str | None, secrets: list[str]) -> Any:
    """The redacted form of ``value`` found under ``key``; masked strings go to ``secrets``."""
    k = (key or "").lower()
    if isinstance(value, Mapping):
        if key is None or k in CONTAINER_KEYS or k in SAFE_KEYS:
            return {kk: _walk(v, str(kk), secrets) for kk, v in value.items()}
        _collect(value, secrets)
        return MASK
    if isinstance(value, (list, tuple)) and k in SAFE_KEYS:
        return [_walk(v, key, secrets) for v in value]
    if k == "token" and isinstance(value, str) and value in SAFE_TOKENS:
        return value
    if k in SAFE_KEYS and (value is None or isinstance(value, (bool, int, float))):
        return value
    if k in SAFE_KEYS and isinstance(value, str):
        secrets += _userinfo_secrets(value)
        return redact_uri(value)
    _collect(value, secrets)
    return MASK


def _collect(value: Any, secrets: list[str]) -> None:
    if isinstance(value, str):
        secrets.append(value)
    elif isinstance(value, bytes):
        secrets.append(value.decode("utf-8", "surrogateescape"))
    elif isinstance(value, Mapping):
        for v in value.values():
            _collect(v, secrets)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for v in value:
            _collect(v, secrets)


def redact_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``storage_options`` fit for run.json and logs: keys of :data:`SAFE_KEYS` keep their
    values (strings without userinfo or credential query parameters), mappings under
    :data:`CONTAINER_KEYS` are walked the same way, every other value is ``"***"``."""
    if not options:
        return {}
    if not isinstance(options, Mapping):
        return {"storage_options": MASK}
    return _walk(options, None, [])


def secret_values(options: Mapping[str, Any] | None) -> list[str]:
    """Every string that :func:`redact_options` masks (and userinfo it strips), at least
    :data:`MIN_SECRET_LEN` characters long, longest first; pass them to :func:`redact_text`."""
    if not options or not isinstance(options, Mapping):
        return []
    found: list[str] = []
    _walk(options, None, found)
    return _variants(found)


def _variants(values: Iterable[str]) -> list[str]:
    """The secrets, their encoded forms, and the long pieces of compound ones (the token of
    ``Bearer TOKEN``, the key of ``AccountKey=KEY;...``), which messages may show alone."""
    out: set[str] = set()
    for v in values:
        if not isinstance(v, str) or len(v) < MIN_SECRET_LEN:
            continue
        pieces = [v]
        for part in _PIECES.split(v):
            pieces += [part, part.partition("=")[2]]
        for p in pieces:
            if p == v or len(p) >= MIN_PIECE_LEN:
                out.update(
                    f
                    for f in (p, quote(p, safe=""), unquote(p), repr(p)[1:-1])
                    if len(f) >= MIN_SECRET_LEN
                )
    return sorted(out, key=lambda s: (-len(s), s))


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Free text (a message, a traceback) made safe to show: each of ``secrets`` (also
    percent-encoded or repr-escaped) replaced by ``***``, ``user:pass@`` removed from every URL,
    credential query parameters masked, undecodable bytes shown as ``\\xNN``."""
    # URLs first: a secret that happens to be a scheme ("http") must not hide their userinfo
    if "://" in text and "@" in text:
        text = _TEXT_USERINFO.sub(r"\1", text)
    if "=" in text:
        text = _QUERY_SECRET.sub(rf"\1{MASK}", text)
    for s in _variants(secrets):
        if s in text:
            text = text.replace(s, MASK)
    return show_undecodable(text)
