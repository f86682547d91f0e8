"""A job, as read from YAML: frozen dataclasses, validated once, before any work.

Unknown keys are errors that name the key and the allowed keys. ``--set a.b=c`` overrides are
applied to the raw mapping first; their values are parsed as YAML (``--set ray.num_workers=2``
gives an int, ``--set styles=[a.jpg,b.jpg]`` a list).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import yaml

from pipeline.redact import redact_options, redact_uri
from stylize.config import ConfigError, StyleConfig, config_from_mapping

MODES = ("resume", "overwrite")
RETRY_FAILED = ("transient", "none", "all")  # which earlier failures a resume tries again
# Engine options that change neither pixels nor losses: left out of the params hash so that a
# job can resume on another device or with another batch size.
NON_OUTPUT_OPTIONS = ("device", "batch_size", "log_every")


class JobConfigError(ValueError):
    """A bad job file or override; the message names the key (and the allowed keys/values)."""


@dataclass(frozen=True)
class RayConfig:
    """Where the actors run. ``address``: null starts an embedded local Ray; ``auto`` or a URL
    joins a cluster; ``inline`` runs one worker in this process without Ray (memory:// URLs,
    debugging)."""

    address: str | None = None
    num_workers: int | str = "auto"  # auto: one per GPU, or one per cpus_per_worker CPUs
    gpus_per_worker: float = 1.0  # embedded Ray without GPUs: CPU workers; 0 on a CPU cluster
    cpus_per_worker: float = 1.0  # also the torch thread count of a CPU worker
    startup_timeout_s: float = 900.0  # a worker that is not ready by then counts as failed


@dataclass(frozen=True)
class GridConfig:
    """Contact sheet written after the job: originals as header row and column."""

    enabled: bool = False
    cell_size: int = 256  # pixels, longest side of every thumbnail
    rows_per_page: int = 8  # content images per page
    cols_per_page: int = 8  # styles per page


@dataclass(frozen=True)
class StyleSource:
    """One style as written in the job: a name (None: from the file name) and a blend."""

    name: str | None
    uris: tuple[str, ...]
    weights: tuple[float, ...]


@dataclass(frozen=True)
class JobConfig:
    input: str | tuple[str, ...]  # folder (recursive), glob, .txt/.csv/.parquet list, or a list
    styles: str | tuple[StyleSource, ...]  # folder/glob string, or explicit styles
    output: str
    stylize: StyleConfig = field(default_factory=lambda: config_from_mapping({}))
    shard_size: int = 16
    mode: str = "resume"
    max_attempts: int = 3
    item_timeout_s: float = 1800.0
    retry_failed: str = "transient"  # on resume: failed_io/_timeout/_crash once more; none; all
    io_retry_s: float = 150.0  # storage errors retried with backoff this long, then failed_io
    output_format: str = "png"
    output_quality: int = 95  # jpeg/webp
    output_bit_depth: int = 8  # 16: png/tiff only
    extensions: tuple[str, ...] | None = None  # None: every non-hidden file of a folder/glob
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    ray: RayConfig = field(default_factory=RayConfig)
    grid: GridConfig = field(default_factory=GridConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-able form (run.json)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["stylize"] = self.stylize.to_dict()
        d["ray"] = dataclasses.asdict(self.ray)
        d["grid"] = dataclasses.asdict(self.grid)
        d["input"] = ([redact_uri(u) for u in self.input] if isinstance(self.input, tuple)
                      else redact_uri(self.input))
        d["output"] = redact_uri(self.output)
        d["styles"] = redact_uri(self.styles) if isinstance(self.styles, str) else [
            {"name": s.name, "uris": [redact_uri(u) for u in s.uris], "weights": list(s.weights)}
            for s in self.styles]
        d["extensions"] = None if self.extensions is None else list(self.extensions)
        d["storage_options"] = redact_options(self.storage_options)
        return d

    @property
    def params_hash(self) -> str:
        """Hash of everything that determines an output's pixels (engine and encoding)."""
        params = {k: v for k, v in self.stylize.to_dict().items() if k not in NON_OUTPUT_OPTIONS}
        params["output"] = [self.output_format, self.output_quality, self.output_bit_depth]
        return stable_hash(params)


def stable_hash(obj: Any, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


# ---------------------------------------------------------------------------------- loading

def load_job(path: str, overrides: Sequence[str] = (), mode: str | None = None) -> JobConfig:
    """Read a YAML job, apply ``--set`` overrides and ``--mode``, validate."""
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise JobConfigError(f"{path}: no such job file") from None
    except yaml.YAMLError as e:
        raise JobConfigError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise JobConfigError(f"{path}: expected a mapping of keys, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides)
    if mode is not None:
        raw["mode"] = mode
    return job_from_mapping(raw)


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``["stylize.size=64", "ray.num_workers=2"]`` applied to a copy of ``raw``."""
    out = json.loads(json.dumps(raw, default=str)) if raw else {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise JobConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. stylize.size=256")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError:
            raise JobConfigError(f"--set {item!r}: value is not valid YAML") from None
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            child = node.get(p)
            if child is True and p == "grid":
                child = {}  # grid: true plus --set grid.cell_size=...
            if child is None:
                child = {}
            if not isinstance(child, dict):
                raise JobConfigError(f"--set {key}: {p!r} is not a mapping")
            node[p] = child
            node = child
        node[parts[-1]] = value
    return out


def _check_keys(section: str, data: Mapping[str, Any], allowed: Sequence[str]) -> None:
    for k in data:
        if k not in allowed:
            where = f"{section}.{k}" if section else str(k)
            raise JobConfigError(f"unknown key {where!r}; allowed keys"
                                 f"{' in ' + section if section else ''}: {', '.join(allowed)}")


def _num(key: str, value: Any, kind: type, minimum: float, strict: bool = False) -> Any:
    try:
        if isinstance(value, bool):
            raise ValueError
        v = kind(value)
        if kind is int and float(value) != v:
            raise ValueError
    except (TypeError, ValueError):
        raise JobConfigError(f"{key}: expected {'an integer' if kind is int else 'a number'}, "
                             f"got {value!r}") from None
    if v < minimum or (strict and v == minimum):
        raise JobConfigError(f"{key}: must be {'>' if strict else '>='} {minimum}, got {value!r}")
    return v


def _str(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise JobConfigError(f"{key}: expected a non-empty string (path or URL), got {value!r}")
    return value.strip()


def _styles(value: Any) -> str | tuple[StyleSource, ...]:
    if value is None:
        raise JobConfigError("styles: missing; give a list of images, a folder, or a mapping "
                             "name -> URI (or -> {uri, weight}, or -> a list of those to blend)")
    if isinstance(value, str):
        return _str("styles", value)
    if isinstance(value, list):
        if not value:
            raise JobConfigError("styles: the list is empty")
        return tuple(StyleSource(None, (_str(f"styles[{i}]", v),), (1.0,))
                     for i, v in enumerate(value))
    if isinstance(value, dict):
        if not value:
            raise JobConfigError("styles: the mapping is empty")
        out = []
        for name, spec in value.items():
            parts = spec if isinstance(spec, list) else [spec]
            uris, weights = [], []
            for p in parts:
                if isinstance(p, dict):
                    _check_keys(f"styles.{name}", p, ("uri", "weight"))
                    uris.append(_str(f"styles.{name}.uri", p.get("uri")))
                    weights.append(_num(f"styles.{name}.weight", p.get("weight", 1.0), float,
                                        0, strict=True))
                else:
                    uris.append(_str(f"styles.{name}", p))
                    weights.append(1.0)
            if not uris:
                raise JobConfigError(f"styles.{name}: no image given")
            out.append(StyleSource(str(name), tuple(uris), tuple(weights)))
        return tuple(out)
    raise JobConfigError(f"styles: expected a list, a folder or a mapping, got {value!r}")


def _input(value: Any) -> str | tuple[str, ...]:
    if isinstance(value, list):
        if not value:
            raise JobConfigError("input: the list is empty")
        return tuple(_str(f"input[{i}]", v) for i, v in enumerate(value))
    if value is None:
        raise JobConfigError("input: missing; give a folder, a glob, a .txt/.csv/.parquet list "
                             "of URIs, or a list of URIs")
    return _str("input", value)


def _ray(value: Any) -> RayConfig:
    if value is None:
        return RayConfig()
    if not isinstance(value, dict):
        raise JobConfigError(f"ray: expected a mapping, got {value!r}")
    _check_keys("ray", value, [f.name for f in dataclasses.fields(RayConfig)])
    d = dict(value)
    address = d.get("address")
    if address is not None:
        address = _str("ray.address", address)
    workers = d.get("num_workers", "auto")
    if workers != "auto":
        workers = _num("ray.num_workers", workers, int, 1)
    return RayConfig(
        address=address, num_workers=workers,
        gpus_per_worker=_num("ray.gpus_per_worker", d.get("gpus_per_worker", 1.0), float, 0),
        cpus_per_worker=_num("ray.cpus_per_worker", d.get("cpus_per_worker", 1.0), float, 0,
                             strict=True),
        startup_timeout_s=_num("ray.startup_timeout_s", d.get("startup_timeout_s", 900.0),
                               float, 0, strict=True),
    )


def _grid(value: Any) -> GridConfig:
    if value is None or value is False:
        return GridConfig(enabled=False)
    if value is True:
        return GridConfig(enabled=True)
    if not isinstance(value, dict):
        raise JobConfigError(f"grid: expected true, false or a mapping, got {value!r}")
    allowed = [f.name for f in dataclasses.fields(GridConfig)]
    _check_keys("grid", value, allowed)
    d = {"enabled": True, **value}
    if not isinstance(d["enabled"], bool):
        raise JobConfigError(f"grid.enabled: expected true or false, got {d['enabled']!r}")
    return GridConfig(
        enabled=d["enabled"],
        cell_size=_num("grid.cell_size", d.get("cell_size", 256), int, 16),
        rows_per_page=_num("grid.rows_per_page", d.get("rows_per_page", 8), int, 1),
        cols_per_page=_num("grid.cols_per_page", d.get("cols_per_page", 8), int, 1),
    )


def job_from_mapping(raw: Mapping[str, Any]) -> JobConfig:
    """Validate a raw mapping (parsed YAML) into a JobConfig; JobConfigError otherwise."""
    from stylize.images import OUTPUT_FORMATS

    allowed = [f.name for f in dataclasses.fields(JobConfig)]
    _check_keys("", raw, allowed)
    if "output" not in raw:
        raise JobConfigError("output: missing; give a folder path or URL for the results")
    stylize_raw = raw.get("stylize") or {}
    if not isinstance(stylize_raw, dict):
        raise JobConfigError(f"stylize: expected a mapping of engine options, got {stylize_raw!r}")
    try:
        style_cfg = config_from_mapping(stylize_raw)
    except ConfigError as e:
        raise JobConfigError(f"stylize: {str(e).lstrip('-')}") from None

    mode = raw.get("mode", "resume")
    if mode not in MODES:
        raise JobConfigError(f"mode: {mode!r} is not allowed; allowed: {', '.join(MODES)}")
    retry_failed = raw.get("retry_failed", "transient")
    if retry_failed not in RETRY_FAILED:
        raise JobConfigError(f"retry_failed: {retry_failed!r} is not allowed; allowed: "
                             f"{', '.join(RETRY_FAILED)}")
    fmt = str(raw.get("output_format", "png")).lower()
    fmt = "jpeg" if fmt == "jpg" else fmt
    if fmt not in OUTPUT_FORMATS:
        raise JobConfigError(f"output_format: {fmt!r} is not allowed; allowed: "
                             f"{', '.join(OUTPUT_FORMATS)}")
    bit_depth = _num("output_bit_depth", raw.get("output_bit_depth", 8), int, 8)
    if bit_depth not in (8, 16) or (bit_depth == 16 and fmt not in ("png", "tiff")):
        raise JobConfigError(f"output_bit_depth: {bit_depth} is not allowed; 8, or 16 with "
                             "output_format png or tiff")
    quality = _num("output_quality", raw.get("output_quality", 95), int, 1)
    if quality > 100:
        raise JobConfigError(f"output_quality: must be <= 100, got {quality}")
    options = raw.get("storage_options") or {}
    if not isinstance(options, dict):
        raise JobConfigError(f"storage_options: expected a mapping, got {options!r}")
    extensions = raw.get("extensions")
    if extensions is not None:
        if isinstance(extensions, str):
            extensions = [extensions]
        if not isinstance(extensions, list) or not extensions:
            raise JobConfigError(f"extensions: expected a list such as [jpg, png], got "
                                 f"{extensions!r}")
        extensions = tuple("." + str(e).lower().lstrip(".") for e in extensions)

    job = JobConfig(
        input=_input(raw.get("input")),
        styles=_styles(raw.get("styles")),
        output=_str("output", raw.get("output")),
        stylize=style_cfg,
        shard_size=_num("shard_size", raw.get("shard_size", 16), int, 1),
        mode=mode,
        max_attempts=_num("max_attempts", raw.get("max_attempts", 3), int, 1),
        item_timeout_s=_num("item_timeout_s", raw.get("item_timeout_s", 1800.0), float, 0,
                            strict=True),
        retry_failed=retry_failed,
        io_retry_s=_num("io_retry_s", raw.get("io_retry_s", 150.0), float, 0),
        output_format=fmt,
        output_quality=quality,
        output_bit_depth=bit_depth,
        extensions=extensions,
        storage_options=dict(options),
        ray=_ray(raw.get("ray")),
        grid=_grid(raw.get("grid")),
    )
    _check_memory_urls(job)
    return job


def _check_memory_urls(job: JobConfig) -> None:
    uris = [job.output, *([job.input] if isinstance(job.input, str) else job.input)]
    uris += [job.styles] if isinstance(job.styles, str) else [u for s in job.styles for u in s.uris]
    if job.ray.address != "inline" and any(u.startswith("memory://") for u in uris):
        raise JobConfigError("memory:// lives in one process and Ray workers cannot see it; "
                             "set ray.address: inline, or use a folder or s3:// URL")
