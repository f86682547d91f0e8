"""The Python job API: :func:`run`, what ``stylize run`` does, called from Python.

    import pipeline

    result = pipeline.run("configs/demo.yaml", overrides=["stylize.size=64"])
    print(result.counts, result.manifest_uri, result.report_uri)

``job`` is a path to a YAML job file, a mapping with the same keys (as ``yaml.safe_load``
gives), or a :class:`~pipeline.jobconfig.JobConfig`. It is validated as the command validates
it, and every error the command would print as one line (exit 2, 3 ...) is raised here as a
:class:`~stylize.common.StylizeError` whose ``str`` is that line and whose ``exit_code`` is
the command's; a job whose items partly failed is not an error: ``result.exit_code`` is 1 and
the failed rows are in the manifest. SIGINT/SIGTERM are left to the caller (Python's
``KeyboardInterrupt``): every shard finished before it is kept, and the next call resumes.
The command (:mod:`pipeline.cli`) is a thin caller of this function.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from typing import IO, Any, Union

from pipeline.jobconfig import JobConfig, JobConfigError, apply_overrides, job_from_mapping
from pipeline.jobconfig import load_job as _load_job
from pipeline.runstate import JobResult

__all__ = ["JobLike", "JobResult", "load", "run"]

JobLike = Union[str, "os.PathLike[str]", Mapping[str, Any], JobConfig]


def load(
    job: JobLike,
    overrides: Sequence[str] = (),
    *,
    mode: str | None = None,
    limit: int | None = None,
) -> JobConfig:
    """The validated job, from a path, a mapping or a model, with ``--set``-style
    ``overrides`` (``["stylize.size=256", "ray.num_workers=2"]``), ``mode`` (resume or
    overwrite) and ``limit`` (a trial of N items) applied. Raises JobConfigError (exit 2)
    with the command's message."""
    extra = [*overrides, *([f"limit={limit}"] if limit is not None else [])]
    if isinstance(job, (str, os.PathLike)):
        return _load_job(os.fspath(job), extra, mode)
    if isinstance(job, JobConfig):
        if not extra and mode is None:
            return job
        raw: Mapping[str, Any] = job.to_mapping()
    elif isinstance(job, Mapping):
        raw = job
    else:
        raise JobConfigError(
            f"a job is a path to a YAML file, a mapping or a JobConfig, not {type(job).__name__}"
        )
    data = apply_overrides(raw, extra)
    if mode is not None:
        data["mode"] = mode
    return job_from_mapping(data)


def run(
    job: JobLike,
    overrides: Sequence[str] = (),
    *,
    mode: str | None = None,
    limit: int | None = None,
    takeover: bool = False,
    stream: IO[str] | None = None,
) -> JobResult:
    """Run a job to the end (resuming what its output folder already holds) and return its
    :class:`JobResult`: ``exit_code`` (0 all ok, 1 some items failed), ``counts`` per
    status, ``total``/``ok``/``failed``, ``computed`` (items this call processed),
    ``manifest_uri``, ``run_info_uri``, ``report_uri``, ``grid_uris`` and ``summary`` (the
    text ``stylize run`` prints, also written to ``stream`` when one is given).

    Raises a :class:`~stylize.common.StylizeError` carrying ``exit_code``: 2 for the job
    (bad keys, inputs or styles that cannot be listed or read, an output folder another
    driver holds), 3 when storage or the cluster fails during the run (resumable: call
    again). ``takeover``: take the output folder from a driver that is gone."""
    from pipeline.driver import run_job  # imports pyarrow, fsspec (and Ray when used)

    config = load(job, overrides, mode=mode, limit=limit)
    text = io.StringIO()
    result = run_job(config, stream=text, takeover=takeover)
    result.summary = text.getvalue()
    if stream is not None:
        stream.write(result.summary)
        stream.flush()
    return result
