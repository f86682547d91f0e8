"""Resume: what an output folder already holds, and whether this job may continue it.

A run's identity is its fingerprint (engine settings, encoding, styles, dataset keys and its
input: the input as given and a list file's content hash). The same fingerprint resumes: the
rows of the finished parts are kept, earlier failures tried again as ``retry_failed`` says.
Another fingerprint is refused (exit 2) with the difference named; ``mode: overwrite`` clears
the folder's run files instead.

Every file read back here is checked (:class:`pipeline.manifest.Damage`): a part, ``job.json``
or shard tar that cannot be read is moved to ``_quarantine/`` and what it held is computed
again; the job always finishes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import grid as grids
from pipeline import manifest, storage
from pipeline.containers import Container
from pipeline.jobconfig import JobConfig, JobConfigError, output_options
from pipeline.redact import redact_uri
from pipeline.runfolder import JOB_FILE, RunFolder

log = logging.getLogger(__name__)


class JobRefused(JobConfigError):
    """The output folder holds a run made with another configuration."""


def fingerprint(job: JobConfig, styles, inputs: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What the outputs depend on; a rerun with a different fingerprint is refused.
    ``inputs``: the listing's identity (the input as given, a list file's hash)."""
    return {
        "params_hash": job.params_hash,
        "stylize": output_options(job.stylize),
        "output": {
            "format": job.output_format,
            "quality": job.output_quality,
            "bit_depth": job.output_bit_depth,
        },
        "styles": {
            s.name: {"uris": [redact_uri(u) for u in s.uris], "weights": list(s.weights)}
            for s in styles
        },
        **_dataset_keys(job),
        **({"inputs": dict(inputs)} if inputs else {}),
    }


def _dataset_keys(job: JobConfig) -> dict[str, Any]:
    """The dataset keys that differ from their defaults (a run made before they existed has
    the same fingerprint as one with the defaults)."""
    keys = {
        "assign": job.assign if isinstance(job.assign, str) else job.assign.model_dump(),
        "layout": job.layout,
        "container": job.container,
        "sweep": job.sweep,
        "masks": None if job.masks is None else job.masks.model_dump(),
    }
    defaults = {
        "assign": "all",
        "layout": "by_style",
        "container": "files",
        "sweep": None,
        "masks": None,
    }
    return {k: v for k, v in keys.items() if v != defaults[k]}


def _diff(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += _diff(a, b, f"{prefix}{k}.")
        elif a != b and k != "params_hash":
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def changed(old_job: Mapping[str, Any], fp: Mapping[str, Any]) -> list[str]:
    """How the fingerprint ``fp`` differs from the one in ``old_job`` (job.json), one line
    per key; [] for the same job. A run made before the input was part of the identity is
    compared without it."""
    before = dict(old_job.get("fingerprint") or {})
    now = {k: v for k, v in fp.items() if k != "inputs" or "inputs" in before}
    if before == now:
        return []
    return _diff(before, now) or [f"({JOB_FILE}: unknown run)"]


def _refuse(job: JobConfig, changes: list[str]) -> JobRefused:
    return JobRefused(
        f"output {job.output} holds a run made with another configuration "
        f"({'; '.join(changes[:5])}{'; ...' if len(changes) > 5 else ''}); "
        "use --mode overwrite to redo it, or another output folder"
    )


def check_folder(
    job: JobConfig, fp: dict[str, Any], damage: manifest.Damage, container: Container
) -> pa.Table:
    """Resume the same job, refuse another one (JobRefused), or clear the folder for
    ``overwrite``. Returns the rows of the folder's intact parts (the newest row per item)
    whose outputs the container still holds whole; damaged files are moved aside through
    ``damage``."""
    options = job.storage_options
    folder = RunFolder(job.output)
    if job.mode == "overwrite":
        if storage.exists(folder.job_json, options) or manifest.part_ids(job.output, options):
            manifest.clear_run(job.output, options)
            grids.remove_grids(job.output, options)
        return manifest.SCHEMA.empty_table()
    old = manifest.read_json(
        folder.job_json, options, damage, "the job is checked against its parts instead"
    )
    rows = container.check(manifest.read_parts(job.output, options, damage=damage), damage)
    if old is not None:
        changes = changed(old, fp)
        if changes:
            raise _refuse(job, changes)
    elif rows.num_rows and any(u.uri == folder.job_json for u in damage.found):
        # job.json is gone to quarantine: the parts' engine settings must be this job's
        made = set(pc.unique(rows["params_hash"]).to_pylist()) - set(job.point_hashes())
        if made:
            raise _refuse(
                job,
                [
                    f"{JOB_FILE} damaged, and its parts were made with other "
                    f"engine settings (params_hash {min(made)})"
                ],
            )
    elif rows.num_rows or manifest.part_ids(job.output, options):
        raise _refuse(job, [f"(no {JOB_FILE}: unknown run)"])
    return rows


def previous_rows(
    job: JobConfig, table: pa.Table, ids: pa.Array
) -> tuple[pa.Table, dict[str, int]]:
    """Of the parts' rows ``table``: those to keep, and the attempts of the items to try
    again (``ids``: the job's item ids). Columnar throughout, no copy where nothing is left
    out: a resumed million-item run stays within seconds and a few hundred MB."""
    mine = pc.is_in(table["item_id"], value_set=ids)
    if not pc.all(mine).as_py():
        table = table.filter(mine)
    retry = {
        "none": (),
        "all": tuple(s for s in manifest.STATUSES if s != "ok"),
        "transient": manifest.TRANSIENT_STATUSES,
    }[job.retry_failed]
    again = pc.is_in(table["status"], pa.array(retry, pa.string()))
    if not pc.any(again).as_py():
        return table, {}
    redo = table.filter(again)
    tries = dict(zip(redo["item_id"].to_pylist(), redo["attempt"].to_pylist()))
    return table.filter(pc.invert(again)), tries
