"""Orchestration of batch style transfer: the only package that knows Ray, fsspec and Parquet.

Modules follow the data flow::

    cli        the stylize command: run / grid / status / plan ...; shell: its parser and
               stderr lines; image_cmd, bench_cmd, quality_cmd: stylize image / bench / quality
    jobconfig  YAML job -> frozen JobConfig (RayConfig, GridConfig); --set overrides
    sources    input and styles listed through fsspec (storage: pkg://, local, s3://, ...)
    items      WorkItem (id, output path), shards
    driver     validate -> resume/refuse/overwrite -> shards -> scheduler -> manifest, run.json
    scheduler  the policy, no Ray: what goes where; what a death, a timeout, a bad start means
    raypool    its executor on Ray actors;  inline  its executor in this process (no Ray)
    worker     StyleWorker (plain class, no Ray): bytes -> engine -> outputs + rows
    storage    every read/write/list, retried with backoff;  redact  secrets out of messages
    errors     exit codes and the exceptions behind them
    manifest   explicit pyarrow schema, shard parts, manifest.parquet, run.json
    runfolder  the names of an output folder's own files and folders (RunFolder)
    progress   tqdm bar or log lines;  grid  contact sheets;  status  run-folder summary
    api        pipeline.run(job): the Python job API that ``stylize run`` calls
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for type checkers; at run time, imported on first use (PEP 562)
    from pipeline.api import JobResult, load, run
    from pipeline.jobconfig import JobConfig
    from stylize.common import StylizeError

__all__ = ["JobConfig", "JobResult", "StylizeError", "load", "run"]

_LAZY = {
    "run": "pipeline.api",
    "load": "pipeline.api",
    "JobResult": "pipeline.api",
    "JobConfig": "pipeline.jobconfig",
    "StylizeError": "stylize.common",
}


def __getattr__(name: str) -> Any:
    """``pipeline.run`` and the rest of the Python API, imported when first used, so that
    ``import pipeline.scheduler`` (say) does not pull pyarrow, fsspec or Ray in."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
