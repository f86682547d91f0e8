"""A job, as read from YAML: frozen pydantic models, every default written once, validated
once before any work.

Every problem of a file is reported at once, one line each (the key path, what is wrong, the
allowed values, a "did you mean" for a near miss of a key). ``--set a.b=c`` overrides are
applied to the raw mapping first; their values are parsed as YAML (``--set
ray.num_workers=2`` gives an int, ``--set styles=[a.jpg,b.jpg]`` a list). ``stylize schema``
prints the JSON Schema of :class:`JobConfig`, which editors use to complete and check job
files.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.items import MaskPair
from pipeline.redact import redact_options, redact_uri
from stylize.common import StylizeError, describe_validation_errors, near_miss, short_hash
from stylize.config import (
    NETWORK_OPTIONS,
    BitDepth,
    ConfigError,
    OutputFormat,
    StyleConfig,
    bit_depth_problem,
)

Mode = Literal["resume", "overwrite"]
MODES: tuple[Mode, ...] = get_args(Mode)
RetryFailed = Literal["transient", "none", "all"]  # which earlier failures a resume tries again
RETRY_FAILED: tuple[RetryFailed, ...] = get_args(RetryFailed)
FORMAT_ALIASES = {"jpg": "jpeg", "tif": "tiff"}
# Engine options that change neither pixels nor losses: left out of the params hash so that a
# job can resume on another device or with another batch size.
NON_OUTPUT_OPTIONS = ("device", "batch_size", "log_every")
# Engine options added after runs were made, at the value that reproduces those runs: left out
# of the params hash and the fingerprint at that value, so an earlier run folder resumes.
LATER_OPTIONS = {"style_loss": "gram"}


def output_options(cfg: StyleConfig) -> dict[str, Any]:
    """The engine options an output depends on, as hashed and compared on resume."""
    return {
        k: v
        for k, v in cfg.to_dict().items()
        if k not in NON_OUTPUT_OPTIONS and LATER_OPTIONS.get(k, object()) != v
    }


SCHEMA_FILE = "configs/job.schema.json"  # `stylize schema` output, named by the shipped configs

_FROZEN = ConfigDict(frozen=True, extra="forbid")
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class JobConfigError(StylizeError, ValueError):
    """A bad job file or override; one line per problem (key path, what is wrong, allowed)."""


class RayConfig(BaseModel):
    """Where the actors run."""

    model_config = _FROZEN
    address: Text | None = Field(
        None,
        description=(
            "null: a private local Ray (always, even with RAY_ADDRESS set); auto: the machine's "
            "cluster; ray://host:port or host:port: that cluster; inline: this process, no Ray"
        ),
    )
    num_workers: Literal["auto"] | Annotated[int, Field(ge=1)] = Field(
        "auto", description="auto: one per GPU, or one per cpus_per_worker CPUs"
    )
    gpus_per_worker: float = Field(1.0, ge=0, description="0 on a CPU-only cluster")
    cpus_per_worker: float = Field(1.0, gt=0, description="also a CPU worker's torch threads")
    startup_timeout_s: float = Field(
        900.0,
        gt=0,
        description=("a worker not ready by then counts as failed; with none ready, the job stops"),
    )


class GridConfig(BaseModel):
    """Contact sheet written after the job: originals as header row and column. In a job
    file ``grid: true``, ``false`` or a mapping of these keys (``enabled`` then defaults to
    true)."""

    model_config = _FROZEN
    enabled: bool = True
    cell_size: int = Field(256, ge=16, description="pixels, longest side of every thumbnail")
    rows_per_page: int = Field(8, ge=1, description="content images per page")
    cols_per_page: int = Field(8, ge=1, description="styles per page")


class RandomAssign(BaseModel):
    """``k`` distinct styles per content, drawn from the style set: the draw depends only on
    the content's relative path, the seed and the style set (not on listing order, shards,
    workers, or the other contents), so a resume or a rerun draws the same."""

    model_config = _FROZEN
    random: int = Field(ge=1, description="styles per content")
    seed: int = 0


AssignMode = Literal["all", "column"]
ASSIGN_MODES: tuple[AssignMode, ...] = get_args(AssignMode)
Layout = Literal["by_style", "mirror"]
LAYOUTS: tuple[Layout, ...] = get_args(Layout)
Container = Literal["files", "webdataset"]
CONTAINERS: tuple[Container, ...] = get_args(Container)


class BlendPart(BaseModel):
    """One image of a style, with its weight in a blend."""

    model_config = _FROZEN
    uri: Text
    weight: float = Field(1.0, gt=0)


class MaskConfig(BaseModel):
    """Spatial control per content (Gatys et al. 2017): one greyscale mask per content, white
    where ``foreground``'s style applies, black where ``background``'s does (soft masks
    blend); a side without a style keeps its content (no style loss there). The masks come
    from a list input's column or from a folder mirroring the input tree, one of them."""

    model_config = _FROZEN
    column: Text | None = Field(
        None,
        description=(
            "a .csv/.parquet/.jsonl list input's column of mask URIs, e.g. mask_uri (relative "
            "entries: relative to the list file)"
        ),
    )
    folder: Text | None = Field(
        None,
        description=(
            "a folder mirroring the input tree: the mask of {input}/a/b.jpg is "
            "{folder}/a/b{suffix}.<any image extension>"
        ),
    )
    suffix: str = Field(
        "", description="with folder: added to a mask's file stem, e.g. _mask for a/b_mask.png"
    )
    foreground: Text | None = Field(
        None, description="the style (by name) painted where the mask is white; null: the content"
    )
    background: Text | None = Field(
        None, description="the style (by name) painted where the mask is black; null: the content"
    )

    @model_validator(mode="after")
    def _sound(self) -> MaskConfig:
        if (self.column is None) == (self.folder is None):
            raise ValueError(
                "give column (a list input's column of mask URIs) or folder (masks mirroring "
                "the input tree), one of them"
            )
        if "suffix" in self.model_fields_set and self.folder is None:
            raise ValueError("suffix is only for folder (it names the masks of a folder)")
        if self.foreground is None and self.background is None:
            raise ValueError(
                "name the style of the foreground (white), of the background (black), or both"
            )
        if self.foreground == self.background:
            raise ValueError(
                f"foreground and background are both {self.foreground!r}: that is the style "
                "everywhere; drop masks"
            )
        return self


@dataclass(frozen=True)
class StyleSource:
    """One style as the job names it, normalised: a name (None: from the file name) and the
    images blended into it. (The driver turns it into a listed ``items.StyleRef``, with
    file versions; the engine decodes that into a ``stylize.engine.Style``.)"""

    name: str | None
    uris: tuple[str, ...]
    weights: tuple[float, ...]


StyleEntry = Text | BlendPart | Annotated[list[Text | BlendPart], Field(min_length=1)]
StylesInput = (
    Text
    | Annotated[list[Text], Field(min_length=1)]
    | Annotated[dict[str, StyleEntry], Field(min_length=1)]
)


# ArtFID's three weight files (stylize.artfid), under the names they are published with: what
# a weights folder (the job key artfid_weights, stylize quality OUTPUT --artfid DIR) must hold
ARTFID_FILES = {
    "the Inception (ArtFID's art_inception.pth or pytorch-fid's pt_inception-*.pth)": (
        "art_inception*.pth",
        "pt_inception-*.pth",
    ),
    "torchvision's AlexNet (alexnet-owt-*.pth)": ("alexnet-*.pth", "alexnet.pth"),
    "LPIPS v0.1's linear layers (alex.pth of the lpips package)": ("alex.pth",),
}
ARTFID_HELP = "see ArtFID in docs/engine.md"


def artfid_weight_files(folder: str) -> tuple[str, str, str]:
    """The paths of ArtFID's three weight files in the local folder ``folder`` (inception,
    alexnet, lpips), found by name only (nothing is read); ValueError saying what is missing
    or ambiguous and the fix (the caller names the folder and its key or option)."""
    if "://" in folder:
        raise ValueError(
            "a URL; give a local folder (the weight files are read from this "
            f"machine's disk, never downloaded; {ARTFID_HELP})"
        )
    if not os.path.isdir(folder):
        raise ValueError(
            f"not a folder; give the folder holding ArtFID's three weight files ({ARTFID_HELP})"
        )
    names = sorted(os.listdir(folder))
    found = []
    for what, patterns in ARTFID_FILES.items():
        match = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
        if len(match) != 1:
            why = "no file" if not match else f"{len(match)} files ({', '.join(match)})"
            raise ValueError(f"{why} for {what}; put exactly one there ({ARTFID_HELP})")
        found.append(os.path.join(folder, match[0]))
    return found[0], found[1], found[2]


def image_extensions() -> tuple[str, ...]:
    """The file extensions Pillow opens (``.jpg``, ``.png``, ``.webp``, ...), sorted."""
    from PIL import Image

    Image.init()
    return tuple(sorted(e for e, fmt in Image.registered_extensions().items() if fmt in Image.OPEN))


class JobConfig(BaseModel):
    """One stylization job. ``styles`` and ``input`` are normalised on load: ``styles`` is a
    folder/glob string or a tuple of :class:`StyleSource`, ``input`` a string or a tuple."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", title="stylize job", arbitrary_types_allowed=True
    )
    # What a field holds once validated is a normal form of what the job file may say
    # (_normalise): type checkers see the former, pydantic (and the JSON Schema) the latter.
    if TYPE_CHECKING:
        input: str | tuple[str, ...]
        styles: str | tuple[StyleSource, ...]
    else:
        input: Text | Annotated[list[Text], Field(min_length=1)] = Field(
            description="folder (recursive), glob, .txt/.csv/.parquet list of URIs, or a list"
        )
        styles: StylesInput = Field(
            description=(
                "a folder or glob, a list of images, or a mapping name -> URI | {uri, weight} | a "
                "list of those to blend"
            )
        )
    output: Text = Field(description="output folder, path or URL")
    stylize: StyleConfig = Field(
        default_factory=StyleConfig, description="engine options (preset + overrides)"
    )
    shard_size: int = Field(
        16, ge=1, description="work items per shard: unit of retry and of manifest parts"
    )
    mode: Mode = "resume"
    max_attempts: int = Field(3, ge=1, description="tries before a crash-looping item is isolated")
    item_timeout_s: float = Field(1800.0, gt=0, description="per item; past it: failed_timeout")
    retry_failed: RetryFailed = Field(
        "transient",
        description="on resume, try again: transient (failed_io, failed_timeout, "
        "failed_crash), none, or all (failed_decode too)",
    )
    io_retry_s: float = Field(
        150.0, ge=0, description="storage errors retried with backoff this long, then failed_io"
    )
    lease_timeout_s: float = Field(
        120.0,
        ge=30,
        description=(
            "another driver takes the output folder over once this driver's heartbeat (every "
            "10 s) is this old; --takeover takes it at once"
        ),
    )
    output_format: OutputFormat = "png"
    output_quality: int = Field(95, ge=1, le=100, description="jpeg and webp")
    output_bit_depth: BitDepth = Field(8, description="16: png and tiff only")
    if TYPE_CHECKING:
        extensions: tuple[str, ...] | None  # None: every file
    else:
        extensions: Literal["images", "all"] | Annotated[list[Text], Field(min_length=1)] | None = (
            Field(
                "images",
                description=(
                    "which files of an input folder are inputs: images (the default: the extensions "
                    "Pillow reads; the others are counted and named, not failed), all (every non-hidden "
                    "file), or a list, e.g. [jpg, png]"
                ),
            )
        )
    input_column: Text | None = Field(
        None,
        description=(
            "the URI column of a .csv/.parquet/.jsonl list input (default: the first of uri, "
            "url, path, content_uri); every other column travels to the manifest"
        ),
    )
    limit: int | None = Field(
        None,
        ge=1,
        description=(
            "a trial: only this many items, drawn the same way every time (the full run later "
            "resumes them)"
        ),
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options for the driver and every worker"
    )
    ray: RayConfig = Field(default_factory=RayConfig)
    if TYPE_CHECKING:
        grid: GridConfig
    else:
        grid: bool | GridConfig = Field(False, description="true, false, or a mapping")
    report: bool = Field(
        True,
        description="write the HTML report {output}/report/index.html "
        "at the end (also: stylize report OUTPUT)",
    )
    assign: AssignMode | RandomAssign = Field(
        "all",
        description=(
            "all: every content x every style; {random: k, seed: 0}: k styles per content, "
            "drawn reproducibly; column: a list input's `style` column names each row's style"
        ),
    )
    layout: Layout = Field(
        "by_style",
        description=(
            "by_style: {output}/{style}/{relative path}; mirror: {output}/images/{relative path} "
            "(the input tree, for ImageFolder; several styles per content: {stem}__{style}.{ext})"
        ),
    )
    container: Container = Field(
        "files",
        description=(
            "files: one image file per item; webdataset: one tar per shard, "
            "{output}/shards/NNNNN.tar, each sample {key}.{ext} + {key}.json"
        ),
    )
    sweep: dict[str, Annotated[list[Any], Field(min_length=1)]] | None = Field(
        None,
        description=(
            "per-image engine options to sweep, e.g. {style_weight: [1e2, 1e3]}: one item per "
            "(content, style, point)"
        ),
    )
    masks: MaskConfig | None = Field(
        None,
        description=(
            "spatial control: one mask per content from a list column or a folder mirroring "
            "the input, e.g. {column: mask_uri, foreground: starry_night, background: null}; "
            "each content gets one item (the foreground and background styles)"
        ),
    )
    target_cache_mb: float | None = Field(
        None,
        gt=0,
        description=(
            "style targets kept per worker (LRU); null: a tenth of the GPU's memory, 1 GiB on a CPU"
        ),
    )
    artfid_weights: Text | None = Field(
        None,
        description=(
            "a local folder holding ArtFID's three weight files (art_inception.pth or "
            "pt_inception-*.pth, alexnet-owt-*.pth, alex.pth; none is downloaded): the run ends "
            "by computing its ArtFID over the ok items, as stylize quality OUTPUT --artfid DIR "
            "(artfid.json beside the manifest parts, a line in the report); null: not computed"
        ),
    )

    # ------------------------------------------------------------------- normalisation
    @field_validator("stylize", mode="before")
    @classmethod
    def _engine(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("output_format", mode="before")
    @classmethod
    def _format_alias(cls, value: Any) -> Any:
        return (
            FORMAT_ALIASES.get(str(value).lower(), str(value).lower())
            if isinstance(value, str)
            else value
        )

    @field_validator("extensions", mode="before")
    @classmethod
    def _one_extension(cls, value: Any) -> Any:
        if value is None:
            return "images"
        return [value] if isinstance(value, str) and value not in ("images", "all") else value

    @field_validator("storage_options", mode="before")
    @classmethod
    def _no_options(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("ray", mode="before")
    @classmethod
    def _ray_default(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("grid", mode="before")
    @classmethod
    def _grid_forms(cls, value: Any) -> Any:
        return False if value is None else value

    @field_validator("artfid_weights", mode="after")
    @classmethod
    def _artfid_folder(cls, value: str | None) -> str | None:
        if value is None:
            return None
        folder = os.path.expanduser(value)
        artfid_weight_files(folder)  # the files are there (read at the end of the run)
        return folder

    @field_validator("sweep", mode="after")
    @classmethod
    def _sweep_keys(cls, value: dict[str, list[Any]] | None) -> dict[str, list[Any]] | None:
        if not value:
            return None
        for key in value:
            if key in NETWORK_OPTIONS or key == "preset":
                raise ValueError(
                    f"{key}: builds the network, which a sweep cannot change; "
                    f"sweep per-image options only"
                )
            if key not in StyleConfig.model_fields:
                near = near_miss(key, StyleConfig.model_fields)
                raise ValueError(
                    f"{key}: not an engine option{f'; did you mean {near!r}?' if near else ''}"
                )
        return value

    @model_validator(mode="after")
    def _normalise(self) -> JobConfig:
        problem = bit_depth_problem(self.output_bit_depth, self.output_format)
        if problem:
            raise ValueError(f"output_bit_depth: {problem}")
        _check_no_effect(self)
        set_ = object.__setattr__  # frozen: normalised once, here
        set_(self, "input", self.input if isinstance(self.input, str) else tuple(self.input))
        set_(self, "styles", _style_sources(self.styles))
        given: Any = self.extensions  # "images", "all" or a list, as the file says
        set_(
            self,
            "extensions",
            image_extensions()
            if given == "images"
            else None
            if given == "all"
            else tuple("." + e.lower().lstrip(".") for e in given),
        )
        set_(
            self,
            "grid",
            self.grid if isinstance(self.grid, GridConfig) else GridConfig(enabled=self.grid),
        )
        _check_memory_urls(self)
        typed: dict[str, dict[str, Any]] = {}  # key -> {repr of a value as given: as typed}
        for point in self.sweep_points():  # every point must be valid options
            try:
                cfg = self.stylize.replace(**point)
            except ConfigError as e:
                raise ValueError(f"sweep {point}: {str(e).lstrip('-')}") from None
            for key, value in point.items():
                v = getattr(cfg, key)
                typed.setdefault(key, {})[repr(value)] = list(v) if isinstance(v, tuple) else v
        if self.sweep:  # the values as the engine reads them ('1e3' from --sweep: 1000.0)
            set_(
                self, "sweep", {k: [typed[k][repr(v)] for v in vs] for k, vs in self.sweep.items()}
            )
        return self

    def sweep_points(self) -> list[dict[str, Any]]:
        """Every combination of the swept values, first key slowest; ``[{}]`` without a
        sweep."""
        points: list[dict[str, Any]] = [{}]
        for key, values in (self.sweep or {}).items():
            points = [{**p, key: v} for p in points for v in values]
        return points

    def point_options(self, point: Mapping[str, Any]) -> StyleConfig:
        """The engine options of one point of the sweep."""
        return self.stylize.replace(**point) if point else self.stylize

    # -------------------------------------------------------------------------- views
    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON-able form for run.json: credentials masked."""
        d = self.model_dump(
            mode="json", exclude={"styles", "input", "stylize", "grid"}, warnings=False
        )
        d["stylize"] = self.stylize.to_dict()
        d["grid"] = self.grid.model_dump()
        d["input"] = (
            [redact_uri(u) for u in self.input]
            if isinstance(self.input, tuple)
            else redact_uri(self.input)
        )
        d["output"] = redact_uri(self.output)
        d["styles"] = (
            redact_uri(self.styles)
            if isinstance(self.styles, str)
            else [
                {
                    "name": s.name,
                    "uris": [redact_uri(u) for u in s.uris],
                    "weights": list(s.weights),
                }
                for s in self.styles
            ]
        )
        d["extensions"] = (
            "all"
            if self.extensions is None
            else "images"
            if self.extensions == image_extensions()
            else list(self.extensions)
        )
        d["storage_options"] = redact_options(self.storage_options)
        return d

    @property
    def params_hash(self) -> str:
        """Hash of everything that determines an output's pixels (engine and encoding)."""
        return self._params_hash(self.stylize)

    def point_hashes(self) -> list[str]:
        """The params hash of each point of the sweep (``[params_hash]`` without one)."""
        return [self._params_hash(self.point_options(p)) for p in self.sweep_points()]

    def _params_hash(self, cfg: StyleConfig) -> str:
        params = output_options(cfg)
        params["output"] = [self.output_format, self.output_quality, self.output_bit_depth]
        return stable_hash(params)

    def replace(self, **changes: Any) -> JobConfig:
        """A copy with some keys changed (not re-validated: for already valid values)."""
        return self.model_copy(update=changes)

    def assignment(self, n_styles: int) -> str | tuple[int, int] | MaskPair:
        """How contents meet styles, as the item planner takes it: ``"all"``, ``"column"``,
        ``(k, seed)`` for ``assign: {random: k, seed: s}``, checked against the style set's
        size, or with ``masks`` the :class:`~pipeline.items.MaskPair` every content gets."""
        if self.masks is not None:
            return MaskPair(self.masks.foreground, self.masks.background)
        assign = self.assign
        if isinstance(assign, str):
            return assign
        if assign.random > n_styles:
            raise JobConfigError(
                f"assign.random: {assign.random} styles per content, but the "
                f"style set has {n_styles}"
            )
        return (assign.random, assign.seed)

    def to_mapping(self) -> dict[str, Any]:
        """The job as a job file's keys (credentials kept): ``job_from_mapping`` of it gives
        this job back (``pipeline.load`` applies overrides to a model through it)."""
        # the keys given (not their defaults): a key's presence can matter (_check_no_effect)
        d = self.model_dump(mode="json", exclude={"styles"}, exclude_unset=True, warnings=False)
        if isinstance(self.styles, str):
            d["styles"] = self.styles
        elif all(s.name is None for s in self.styles):
            d["styles"] = [s.uris[0] for s in self.styles]
        else:
            d["styles"] = {
                s.name: [{"uri": u, "weight": w} for u, w in zip(s.uris, s.weights)]
                for s in self.styles
            }
        return d


def _style_sources(value: Any) -> str | tuple[StyleSource, ...]:
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(StyleSource(None, (u,), (1.0,)) for u in value)
    out = []
    for name, entry in value.items():
        parts = entry if isinstance(entry, list) else [entry]
        parts = [p if isinstance(p, BlendPart) else BlendPart(uri=p) for p in parts]
        out.append(
            StyleSource(str(name), tuple(p.uri for p in parts), tuple(p.weight for p in parts))
        )
    return tuple(out)


QUALITY_FORMATS = ("jpeg", "webp")


def _check_no_effect(job: JobConfig) -> None:
    """A key given that the rest of the job makes pointless is a mistake to report, not a
    setting to ignore (the user believes it acts)."""
    given = job.model_fields_set
    if "output_quality" in given and job.output_format not in QUALITY_FORMATS:
        raise ValueError(
            f"output_quality: has no effect on {job.output_format} (lossless); it is for "
            f"{' and '.join(QUALITY_FORMATS)}: drop it, or set output_format"
        )
    workers = job.ray.num_workers
    if job.ray.address == "inline" and "num_workers" in job.ray.model_fields_set and workers != 1:
        raise ValueError(
            f"ray.num_workers: {workers} has no effect with ray.address: inline (one worker, "
            f"in this process); drop it, or set ray.address: null for a local Ray"
        )
    if job.masks is not None:
        _check_masks(job, job.masks)
    grid = job.grid
    if isinstance(grid, GridConfig) and not grid.enabled and grid.model_fields_set - {"enabled"}:
        raise ValueError(
            "grid: enabled is false, so its other keys have no effect; drop them or enable it"
        )


LIST_INPUTS = (".csv", ".parquet", ".jsonl")  # list inputs with columns


def _check_masks(job: JobConfig, masks: MaskConfig) -> None:
    """Keys that masks make pointless, and a mask column without a list to hold it."""
    if "assign" in job.model_fields_set:
        raise ValueError(
            "assign: has no effect with masks (each content gets one item: the masks' "
            "foreground and background styles); drop assign, or masks"
        )
    single = job.input if isinstance(job.input, str) else ""
    is_list = single.lower().endswith(LIST_INPUTS) and not any(c in single for c in "*?[")
    if masks.column is not None and not is_list:
        raise ValueError(
            f"masks.column: {masks.column!r} needs a .csv, .parquet or .jsonl list input "
            f"(input is {redact_uri(single) if single else 'a YAML list'}); use masks.folder "
            "for masks mirroring a folder"
        )


def _check_memory_urls(job: JobConfig) -> None:
    uris = [job.output, *([job.input] if isinstance(job.input, str) else job.input)]
    uris += [job.styles] if isinstance(job.styles, str) else [u for s in job.styles for u in s.uris]
    uris += [job.masks.folder] if job.masks is not None and job.masks.folder else []
    if job.ray.address != "inline" and any(u.startswith("memory://") for u in uris):
        raise ValueError(
            "memory:// lives in one process and Ray workers cannot see it; set "
            "ray.address: inline, or use a folder or s3:// URL"
        )


def stable_hash(obj: Any, n: int = 16) -> str:
    return short_hash(json.dumps(obj, sort_keys=True, default=str), n=n)


def job_schema() -> dict[str, Any]:
    """The JSON Schema of a job file (``stylize schema``)."""
    return JobConfig.model_json_schema(mode="validation")


# ---------------------------------------------------------------------------------- loading

MAX_JOB_BYTES = 1 << 20  # a job file is a page of settings; long lists go in a list file
MAX_JOB_DEPTH = 32  # nesting levels of a job file (the deepest real key is 4 levels down)


class StrictLoader(yaml.SafeLoader):
    """YAML as a job file may be written: safe types only, no aliases (``*name``: a few
    lines of them expand to gigabytes), at most MAX_JOB_DEPTH levels deep, and no key given
    twice in one mapping (YAML would silently keep the last: a second ``stylize:`` block
    would replace the first). Each refusal names the line."""

    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None,
                None,
                "aliases (*name) are not allowed in a job file; write the value "
                "out where it is used",
                self.peek_event().start_mark,
            )
        self._depth += 1
        try:
            if self._depth > MAX_JOB_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"nested more than {MAX_JOB_DEPTH} levels deep",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # <<: {...}: keys it brings
                    continue  # are overridden by the mapping's own, as YAML means them
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = key in first
                except TypeError:  # an unhashable key: the base class says so
                    break
                if seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key {key!r} given twice (first on line {first[key] + 1}); "
                        f"YAML would keep only the last: remove one",
                        key_node.start_mark,
                    )
                first[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def parse_yaml(text: str) -> Any:
    """A job file's (or a ``--set`` value's) YAML through StrictLoader."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass


def load_job(path: str, overrides: Sequence[str] = (), mode: str | None = None) -> JobConfig:
    """Read a YAML job, apply ``--set`` overrides and ``--mode``, validate."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JOB_BYTES + 1)
        if len(data) > MAX_JOB_BYTES:
            raise JobConfigError(
                f"{path}: larger than {MAX_JOB_BYTES // 1024} KiB, too large for a job file; "
                f"put a long list of inputs in a list file (input: list.csv)"
            )
        raw = parse_yaml(data.decode("utf-8"))
    except FileNotFoundError:
        raise JobConfigError(f"{path}: no such job file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise JobConfigError(f"{path}: cannot be read: {e}") from None
    except yaml.YAMLError as e:
        raise JobConfigError(f"{path}: {_yaml_error(e)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise JobConfigError(f"{path}: expected a mapping of keys, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides)
    if mode is not None:
        raw["mode"] = mode
    try:
        return job_from_mapping(raw)
    except JobConfigError as e:
        n = str(e).count("\n") + 1
        raise JobConfigError(f"{path}: {e}" if n == 1 else f"{path}: {n} problems:\n{e}") from None


def _yaml_error(e: yaml.YAMLError) -> str:
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"not valid YAML: {where}{problem}"


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``["stylize.size=64", "ray.num_workers=2"]`` applied to a copy of ``raw``."""
    out = json.loads(json.dumps(raw, default=str)) if raw else {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise JobConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. stylize.size=256")
        try:
            value = parse_yaml(text) if text.strip() else None
        except yaml.YAMLError as e:
            why = _yaml_error(e).removeprefix("not valid YAML: ")
            raise JobConfigError(f"--set {item!r}: value is not valid YAML ({why})") from None
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


def job_from_mapping(raw: Mapping[str, Any]) -> JobConfig:
    """Validate a raw mapping (parsed YAML) into a JobConfig; JobConfigError listing every
    problem otherwise."""
    try:
        return JobConfig.model_validate(dict(raw))
    except ValidationError as e:
        raise JobConfigError("\n".join(describe_validation_errors(e, JobConfig))) from None
