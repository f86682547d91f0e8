"""What a job's outputs are kept in (job key ``container``), behind one interface that the
driver and resume call without knowing which:

- ``files``: one image file per item, under ``<style>/...`` or ``images/...`` (``layout``);
- ``webdataset``: outputs wait in ``_staging/`` until their shard is done, then are packed
  into ``shards/NNNNN.tar`` (:mod:`pipeline.webdataset`) before the shard's manifest part.

A new container is one class here (and its name in ``jobconfig.CONTAINERS``).
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import manifest, storage
from pipeline import webdataset as wds
from pipeline.items import FORMAT_EXTENSIONS, WorkItem
from pipeline.jobconfig import JobConfig
from pipeline.rows import Row
from pipeline.runfolder import MIRROR_DIR, SHARDS_SHOWN, RunFolder, shard_of_tar

ExtraOf = Callable[[str], dict[str, Any]]  # item id -> the columns a row gets beyond SCHEMA


class Container:
    """``files``: each output is written by its worker under its final name; nothing to do
    when a shard is done."""

    name = "files"

    def __init__(self, job: JobConfig):
        self.job = job
        self.folder = RunFolder(job.output)
        self.options = job.storage_options
        self.keys: dict[str, str] = {}  # item id -> its sample key, where not the id

    @property
    def where(self) -> str:
        """Where the images are, as the summary names it (under the output folder)."""
        return f"{MIRROR_DIR}/..." if self.job.layout == "mirror" else "<style>/..."

    def stage(self, items: list[WorkItem]) -> list[WorkItem]:
        """The items with the URI their worker writes to."""
        return items

    def check(self, rows: pa.Table, damage: manifest.Damage) -> pa.Table:
        """On resume: the rows of finished parts whose outputs are still whole."""
        return rows

    def clean(self) -> None:
        """On resume, before work: remove what a stopped run left half done."""

    def seal(
        self, shard_id: int, rows: list[Row], extra: ExtraOf, secrets: Sequence[str]
    ) -> list[Row]:
        """A shard is done, before its manifest part is written: the rows as recorded."""
        return rows

    def finish(self) -> None:
        """Every shard is done."""


class WebDataset(Container):
    """``webdataset``: a tar per shard, written whole before the shard's manifest part."""

    name = "webdataset"

    @property
    def where(self) -> str:
        return SHARDS_SHOWN

    def stage(self, items: list[WorkItem]) -> list[WorkItem]:
        ext = FORMAT_EXTENSIONS[self.job.output_format]
        stage = self.folder.staging_dir
        if self.job.layout == "mirror":  # the sample's key: its path under images/, the class
            root = f"{self.folder.output}/{MIRROR_DIR}/"
            self.keys = {
                i.item_id: _mirror_key(i.output_uri[len(root) :])
                for i in items
                if i.output_uri.startswith(root)
            }
            if len(set(self.keys.values())) < len(self.keys):  # two names made one: ids
                self.keys = {}
        return [replace(i, output_uri=f"{stage}/{i.item_id}.{ext}") for i in items]

    def check(self, rows: pa.Table, damage: manifest.Damage) -> pa.Table:
        """The tar of every part with ok rows must be whole; one that is not (and its part)
        goes to quarantine, and its items are computed again."""
        ok = rows.filter(pc.equal(rows["status"], "ok"))
        shards = sorted(pc.unique(ok["shard"]).to_pylist())
        if not shards:
            return rows
        with ThreadPoolExecutor(min(16, len(shards))) as pool:
            why = list(
                pool.map(lambda s: wds.tar_damage(self.folder.shard_tar(s), self.options), shards)
            )
        bad = [(s, w) for s, w in zip(shards, why) if w]
        for shard, w in bad:
            tar = self.folder.shard_tar(shard)
            if w != "missing":
                damage.add(tar, w, "its items are computed again")
            damage.add(
                self.folder.part(shard),
                f"its tar {self.folder.relative(tar)} is {w}",
                "its items are computed again",
            )
        if not bad:
            return rows
        gone = pa.array([s for s, _ in bad], pa.int32())
        return rows.filter(pc.invert(pc.is_in(rows["shard"], gone)))

    def clean(self) -> None:
        """Tars without a manifest part (a run that died between the two, or ``mode:
        overwrite``) and staged outputs of a run that stopped: their items are done again,
        and a reader of shards/*.tar must never see a sample twice."""
        parts = set(manifest.part_ids(self.job.output, self.options))
        shards = self.folder.shards_dir
        for name in storage.listdir(shards, self.options):
            if shard_of_tar(name) not in parts:
                storage.remove(storage.join(shards, name), self.options)
        storage.remove(self.folder.staging_dir, self.options, recursive=True)

    def seal(
        self, shard_id: int, rows: list[Row], extra: ExtraOf, secrets: Sequence[str]
    ) -> list[Row]:
        """Pack the shard's ok outputs into shards/NNNNN.tar (their rows then name
        ``tar#key.ext``); each sample's json is its manifest row and its extra columns."""
        ext = FORMAT_EXTENSIONS[self.job.output_format]
        ok = [r for r in rows if r["status"] == "ok"]
        if not ok:
            return rows
        tar = self.folder.shard_tar(shard_id)
        keys = self.keys
        key = {r["item_id"]: keys.get(r["item_id"], r["item_id"]) for r in ok}

        def meta(r: Row) -> dict[str, Any]:
            out = {
                **manifest.clean_row(r, secrets),
                "output_uri": wds.member_uri(tar, key[r["item_id"]], ext),
                **extra(r["item_id"]),
            }
            if r["item_id"] in keys:  # layout: mirror: the path and the class (first folder)
                path = keys[r["item_id"]]
                out.update(path=path, cls=path.split("/")[0] if "/" in path else None)
            return out

        samples = [wds.Sample(key[r["item_id"]], ext, r["output_uri"], meta(r)) for r in ok]
        wds.write_shard(self.job.output, shard_id, samples, self.options)
        return [
            {**r, "output_uri": wds.member_uri(tar, key[r["item_id"]], ext)}
            if r["status"] == "ok"
            else r
            for r in rows
        ]

    def finish(self) -> None:
        storage.remove(self.folder.staging_dir, self.options, recursive=True)


def _mirror_key(rel: str) -> str:
    """A WebDataset key from a path under images/: no extension, no dots (WebDataset splits
    a member name at the first dot of its base name), no '#'."""
    stem = posixpath.splitext(rel)[0]
    return "/".join(part.replace(".", "_").replace("#", "_") or "_" for part in stem.split("/"))


_KINDS: dict[str, type[Container]] = {"files": Container, "webdataset": WebDataset}


def for_job(job: JobConfig) -> Container:
    """The container of ``job`` (its ``container`` key)."""
    return _KINDS[job.container](job)
