"""The manifest row: one per work item, failures included. Its status values, its columns
and how a row is built, in one place; plain Python (the Parquet schema that stores rows is
:data:`pipeline.manifest.SCHEMA`, whose column names are :data:`COLUMNS`, in this order)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, TypedDict

from pipeline.items import WorkItem

STATUSES = (
    "ok",
    "failed_decode",
    "failed_oom",
    "failed_timeout",
    "failed_crash",
    "failed_io",
    "failed_other",
)
# Failures that may not happen again: a resume retries them (job key retry_failed: transient).
TRANSIENT_STATUSES = ("failed_io", "failed_timeout", "failed_crash")


class Row(TypedDict, total=False):
    """A manifest row as the pipeline passes it around (``None`` where a value is unknown)."""

    item_id: str
    content_uri: str  # credentials stripped when written
    style: str
    output_uri: str
    status: str  # one of STATUSES
    error_message: str | None  # None when ok
    attempt: int  # 1 = first try
    width: int | None  # of the output, pixels
    height: int | None
    iterations: int | None
    content_loss: float | None
    style_loss: float | None
    tv_loss: float | None
    total_loss: float | None
    duration_s: float | None  # this item's share of its batch's time
    started_at: datetime | None
    finished_at: datetime
    worker: str | None  # node/actor/device
    params_hash: str
    shard: int
    content_uri_bytes: bytes | None  # the URI's bytes where it is not valid UTF-8
    loss_trace: list[float] | None  # total loss at the engine's progress steps
    # quality figures in fixed layers (stylize.figures), null where not taken
    content_distance: float | None
    gram_distance: float | None
    w2_distance: float | None
    color_distance: float | None
    mask_uri: str | None  # the item's mask (job key masks), credentials stripped; else None


COLUMNS = tuple(Row.__annotations__)


def now() -> datetime:
    return datetime.now(timezone.utc)


def make_row(
    item: WorkItem,
    status: str,
    *,
    shard: int,
    attempt: int,
    params_hash: str | None = None,
    error_message: str | None = None,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
    **values: Any,
) -> Row:
    """A manifest row for ``item``; ``values`` fill the measurement columns; ``params_hash``
    defaults to the item's (its sweep point's)."""
    if status not in STATUSES:
        raise ValueError(f"status {status!r}; allowed: {', '.join(STATUSES)}")
    unknown = set(values) - set(COLUMNS)
    if unknown:
        raise ValueError(f"unknown manifest columns: {sorted(unknown)}")
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(values)
    row.update(
        item_id=item.item_id,
        content_uri=item.content_uri,
        style=item.style,
        output_uri=item.output_uri,
        status=status,
        error_message=error_message,
        attempt=attempt,
        started_at=started_at,
        finished_at=finished_at or now(),
        params_hash=params_hash or item.params_hash,
        shard=shard,
        mask_uri=item.mask.uri or None if item.mask is not None else None,
    )
    return row  # type: ignore[return-value]
