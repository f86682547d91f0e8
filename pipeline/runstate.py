"""The state one run carries from phase to phase (:mod:`pipeline.driver`): what the job
is, what the folder held, what is left to do, what the workers did; and the result a run
returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import manifest
from pipeline.containers import Container
from pipeline.items import Shard, StyleRef, WorkItem
from pipeline.jobconfig import JobConfig
from pipeline.rows import COLUMNS
from pipeline.runfolder import RunFolder
from pipeline.sources import Listing


@dataclass
class JobResult:
    """What a run returns (:func:`pipeline.run`, ``stylize run --json``)."""

    exit_code: int  # 0 every item ok, 1 some failed (their rows say why)
    counts: dict[str, int]  # items per status (ok, failed_decode, ...), the whole job
    output: str  # the output folder, canonical
    manifest_uri: str  # manifest.parquet: one row per item
    grid_uris: list[str] = field(default_factory=list)  # contact sheets written or kept
    computed: int = 0  # items processed by this invocation (the others were resumed)
    report_uri: str | None = None  # report/index.html, when written
    summary: str = ""  # the text summary ``stylize run`` prints

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def ok(self) -> int:
        return self.counts.get("ok", 0)

    @property
    def failed(self) -> int:
        return self.total - self.ok

    @property
    def run_info_uri(self) -> str:
        """run.json: the job, timings, throughput, versions."""
        return RunFolder(self.output).run_json


@dataclass
class RunState:
    """Filled phase by phase: plan (job .. fingerprint), resume (damage .. shards), run
    (new_tables .. cluster), finish reads it all."""

    # plan: the job validated, its inputs and styles listed (nothing written yet)
    job: JobConfig
    listing: Listing
    styles: list[StyleRef]
    container: Container
    fingerprint: dict[str, Any]
    t_start: float  # monotonic
    started_at: datetime
    # resume: what the folder held, what is left
    damage: manifest.Damage | None = None
    items: list[WorkItem] = field(default_factory=list)
    kept: pa.Table = field(default_factory=manifest.SCHEMA.empty_table)  # earlier rows kept
    tries: dict[str, int] = field(default_factory=dict)  # attempts of items tried again
    todo: list[WorkItem] = field(default_factory=list)
    shards: list[Shard] = field(default_factory=list)
    extra: ExtraColumns | None = None
    t_listed: float = 0.0
    # run: what the workers did
    new_tables: manifest.ShardTables = field(default_factory=lambda: manifest.ShardTables(0))
    workers: list[dict] = field(default_factory=list)  # info of every worker that was ready
    cache_stats: list[dict] = field(default_factory=list)  # per worker: style targets
    cluster: dict[str, float] = field(default_factory=dict)
    t_run: float = 0.0

    @property
    def computed(self) -> int:
        return len(self.todo)


class ExtraColumns:
    """The columns a manifest row gets beyond manifest.SCHEMA: one per swept key (its value
    at the item's point) and a list input's other columns (typed as in the input)."""

    def __init__(self, job: JobConfig, listing: Listing, items: list[WorkItem]):
        self.points = job.sweep_points()
        self.keys = list(job.sweep or {})
        # a swept key named like a manifest column (iterations: the evaluations used)
        self.columns = {k: f"sweep_{k}" if k in COLUMNS else k for k in self.keys}
        self.extras = listing.extras
        # built only when there is something to add (a million items: two big dicts)
        self.point_of = {i.item_id: i.point for i in items} if self.keys else {}
        self.row_of: dict[str, int] = {}
        if self.extras is not None:
            row_of = {c.uri: c.row for c in listing.contents}
            self.row_of = {i.item_id: row_of.get(i.content_uri, -1) for i in items}

    def __bool__(self) -> bool:
        return bool(self.keys) or self.extras is not None

    def for_row(self, item_id: str) -> dict[str, Any]:
        """The extra values of one item, as plain Python (for a WebDataset sample's json)."""
        out = {self.columns[k]: self.points[self.point_of.get(item_id, 0)][k] for k in self.keys}
        row = self.row_of.get(item_id, -1)
        if self.extras is not None:
            out.update(
                {
                    c: (self.extras.column(c)[row].as_py() if row >= 0 else None)
                    for c in self.extras.column_names
                }
            )
        return out

    def add_to(self, table: pa.Table) -> pa.Table:
        """``table`` (manifest rows) with the extra columns appended."""
        if not self:
            return table
        ids = table["item_id"].to_pylist()
        for k in self.keys:
            table = table.append_column(
                self.columns[k], pa.array([self.points[self.point_of.get(i, 0)][k] for i in ids])
            )
        if self.extras is not None:
            rows = pa.array([self.row_of.get(i, -1) for i in ids], pa.int64())
            idx = pc.if_else(pc.less(rows, 0), pa.scalar(None, pa.int64()), rows)
            picked = self.extras.take(idx)
            for c in picked.column_names:
                table = table.append_column(c, picked[c])
        return table
