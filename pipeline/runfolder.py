"""The layout of a run folder (a job's ``output``): every name the pipeline gives a file or
folder of its own there is spelled here and nowhere else::

    {output}/_manifest/job.json             what this folder was made with (resume check)
    {output}/_manifest/part-NNNNN.parquet   one per finished shard (see pipeline.manifest)
    {output}/_manifest/quality.parquet      stylize quality OUTPUT: the figures recomputed
    {output}/_manifest/artfid.json          stylize quality OUTPUT --artfid DIR: the ArtFID
    {output}/manifest.parquet               at the end: every item of the job, in job order
    {output}/run.json                       resolved config, versions, weights, timings
    {output}/grid.png, grid-NNN.png         contact sheets (pipeline.grid)
    {output}/grid-sweep-NNN.png             a sweep's pages (pipeline.sweepgrid)
    {output}/report/index.html              the HTML report (pipeline.report)
    {output}/shards/NNNNN.tar               container: webdataset (pipeline.webdataset)
    {output}/_staging/...                   outputs waiting for their shard's tar
    {output}/images/...                     layout: mirror, the input tree repeated
    {output}/_lease.json                    who runs this folder now (pipeline.lease)
    {output}/_quarantine/STAMP/...          files found damaged, moved aside (never deleted)

Names only: no reading or writing, no fsspec, no pyarrow: the standard library alone
(:func:`join` is the URI join that :mod:`pipeline.storage` uses too).
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass


def join(root: str, *parts: str) -> str:
    """Join URI parts with ``/`` (also for local paths: the pipeline only runs on POSIX)."""
    out = root.rstrip("/")
    for p in parts:
        p = p.strip("/")
        if p:
            out = f"{out}/{p}"
    return out


MANIFEST_DIR = "_manifest"  # job.json and the parts
PART_NAME = "part-{:05d}.parquet"
PART_RE = re.compile(r"part-(\d+)\.parquet")  # a part's name; group 1: its shard id
JOB_FILE = "job.json"
RUN_FILE = "run.json"
QUALITY_FILE = "quality.parquet"  # stylize quality OUTPUT: the figures recomputed
ARTFID_FILE = "artfid.json"  # stylize quality OUTPUT --artfid DIR: the run's ArtFID
MANIFEST_FILE = "manifest.parquet"
REPORT_DIR = "report"
REPORT_INDEX = "index.html"
SHARDS_DIR = "shards"
TAR_EXT = ".tar"
STAGING_DIR = "_staging"  # loose outputs wait here until their shard is packed
LEASE_FILE = "_lease.json"  # one driver at a time (pipeline.lease)
QUARANTINE_DIR = "_quarantine"  # damaged files, moved aside under the time they were found
MIRROR_DIR = "images"  # layout: mirror; ImageFolder would take _manifest, report for classes
GRID_PREFIX = "grid"
GRID_EXT = ".png"
GRID_PAGE = f"{GRID_PREFIX}{GRID_EXT}"  # a single page
GRID_PAGE_N = f"{GRID_PREFIX}-{{:03d}}{GRID_EXT}"  # page n of several, from 1
GRID_GLOB = f"{GRID_PREFIX}*{GRID_EXT}"  # every grid page, the sweep's too
SWEEP_GRID_PREFIX = f"{GRID_PREFIX}-sweep-"
SWEEP_GRID_PAGE = f"{SWEEP_GRID_PREFIX}{{:03d}}{GRID_EXT}"  # page n, from 1
SWEEP_GRID_GLOB = f"{SWEEP_GRID_PREFIX}*{GRID_EXT}"
SWEEP_GRID_SHOWN = f"{SWEEP_GRID_PREFIX}NNN{GRID_EXT}"  # how messages name the pages
SHARDS_SHOWN = f"{SHARDS_DIR}/NNNNN{TAR_EXT}"  # how messages name the tars

# Style folders sit next to the run's own files in the output root; a style whose name
# matches one of these (case-insensitively) is refused. "_*" covers _manifest and _staging,
# ".*" the temporary files of atomic writes.
RESERVED_STYLE_NAMES = (
    "_*",
    ".*",
    f"{posixpath.splitext(MANIFEST_FILE)[0]}.*",
    RUN_FILE,
    JOB_FILE,
    f"{GRID_PREFIX}*",
    f"{REPORT_DIR}*",
)


def shard_of_part(name: str) -> int | None:
    """The shard id of a manifest part's file name; None for any other name."""
    m = PART_RE.fullmatch(name)
    return int(m.group(1)) if m else None


def shard_of_tar(name: str) -> int | None:
    """The shard id of a shard tar's file name (``NNNNN.tar``); None for any other name."""
    stem = name[: -len(TAR_EXT)] if name.endswith(TAR_EXT) else ""
    return int(stem) if stem.isdigit() else None


def is_sweep_grid(name: str) -> bool:
    """Whether the file name ``name`` is a sweep's grid page."""
    return name.startswith(SWEEP_GRID_PREFIX) and name.endswith(GRID_EXT)


@dataclass(frozen=True)
class RunFolder:
    """The URIs of the run folder ``output`` (used as given: canonicalise it first where the
    URIs are shown or stored)."""

    output: str

    @property
    def manifest_dir(self) -> str:
        return join(self.output, MANIFEST_DIR)

    def part(self, shard: int) -> str:
        """``_manifest/part-NNNNN.parquet``: the manifest part of shard ``shard``."""
        return join(self.output, MANIFEST_DIR, PART_NAME.format(shard))

    @property
    def job_json(self) -> str:
        return join(self.output, MANIFEST_DIR, JOB_FILE)

    @property
    def run_json(self) -> str:
        return join(self.output, RUN_FILE)

    @property
    def quality_file(self) -> str:
        return join(self.output, MANIFEST_DIR, QUALITY_FILE)

    @property
    def artfid_file(self) -> str:
        return join(self.output, MANIFEST_DIR, ARTFID_FILE)

    @property
    def manifest_file(self) -> str:
        return join(self.output, MANIFEST_FILE)

    @property
    def report_dir(self) -> str:
        return join(self.output, REPORT_DIR)

    @property
    def report_index(self) -> str:
        return join(self.output, REPORT_DIR, REPORT_INDEX)

    @property
    def shards_dir(self) -> str:
        return join(self.output, SHARDS_DIR)

    def shard_tar(self, shard_id: int) -> str:
        """``shards/NNNNN.tar``."""
        if shard_id < 0:
            raise ValueError(f"shard id {shard_id}: must be >= 0")
        return join(self.output, SHARDS_DIR, f"{shard_id:05d}{TAR_EXT}")

    @property
    def staging_dir(self) -> str:
        """``_staging``: where outputs wait until their shard is packed."""
        return join(self.output, STAGING_DIR)

    def grid_pages(self, pages: int) -> list[str]:
        """The contact sheets of a grid of ``pages`` pages: ``grid.png`` for one, else
        ``grid-001.png`` ..."""
        if pages == 1:
            return [join(self.output, GRID_PAGE)]
        return [join(self.output, GRID_PAGE_N.format(n)) for n in range(1, pages + 1)]

    @property
    def lease(self) -> str:
        """``_lease.json``: the owner of the folder while a run is on (pipeline.lease)."""
        return join(self.output, LEASE_FILE)

    @property
    def quarantine_dir(self) -> str:
        return join(self.output, QUARANTINE_DIR)

    def relative(self, uri: str) -> str:
        """``uri`` relative to the folder (as messages name a file of the run)."""
        root = self.output.rstrip("/") + "/"
        return uri[len(root) :] if uri.startswith(root) else uri

    def quarantined(self, uri: str, stamp: str) -> str:
        """Where a damaged file of the folder is moved: ``_quarantine/STAMP/<its path>``."""
        return join(self.output, QUARANTINE_DIR, stamp, self.relative(uri))

    @property
    def temporary_dirs(self) -> list[str]:
        """The folders where this package's atomic writes leave temporaries when cut short
        (the root, the manifest, the report, the shards)."""
        return [self.output, self.manifest_dir, self.report_dir, self.shards_dir]

    def sweep_grid(self, page: int) -> str:
        """``grid-sweep-NNN.png``, ``page`` from 1."""
        return join(self.output, SWEEP_GRID_PAGE.format(page))
