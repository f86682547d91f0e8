"""What the run report shows, as data: the settings that bound it and the facts that
:mod:`pipeline.report` computes from a run folder and :mod:`pipeline.report_pages` renders
(kept apart so that neither imports the other)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np


@dataclass(frozen=True)
class ReportSettings:
    """How much of a run the report shows (every bound here keeps a huge run's report small)."""

    thumb_size: int = 256  # longest side of a thumbnail, pixels
    per_page: int = 48  # gallery tiles per page
    gallery_per_style: int = 96  # items with a thumbnail per style (fewer with many styles)
    gallery_total: int = 1200  # thumbnails of results over all styles
    min_per_style: int = 8
    max_styles: int = 60  # styles with a gallery; the table lists up to max_table_styles
    max_table_styles: int = 1000
    preview: int = 7  # results next to each style on the index page
    index_styles: int = 24  # styles with a preview strip on the index page
    curves_per_style: int = 8
    curve_charts: int = 12  # styles with loss curves on the index page
    index_failures: int = 20  # failures on the index page
    failures_per_page: int = 100
    max_failures: int = 2000  # failures listed on their pages; the manifest has them all
    bins: int = 30
    threads: int = 16  # thumbnails read and written at once (object stores: latency)


@dataclass
class StyleStats:
    """One style's figures and, for a style with a gallery, its sampled ok rows."""

    name: str
    index: int  # in name order: its pages are style-{index}-{page}.html
    items: int
    ok: int
    loss_median: float | None
    iterations_mean: float | None
    seconds_mean: float | None
    uri: str | None  # the style image (the first of a blend)
    thumb: str | None = None
    # manifest rows plus thumb_result, thumb_content and href_result (the full-size output,
    # relative to report/; None inside a shard tar)
    rows: list[dict] | None = None
    pages: int = 0
    content_loss_median: float | None = None  # of the ok items, as the total's
    style_loss_median: float | None = None
    # median quality figures of the ok items (stylize.figures.FIGURES), None where none
    figures: dict[str, float | None] = field(default_factory=dict)


@dataclass
class RunFacts:
    """Everything the pages show, computed once from the run's files."""

    output: str
    run: dict  # run.json ({} for a run that has not finished)
    job: dict  # _manifest/job.json
    counts: dict[str, int]  # by status
    done: int
    total: int
    span_s: float | None  # first start to last finish (manifest.throughput)
    per_ok_s: float | None  # mean worker time of an ok item
    histograms: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> (edges, heights)
    throughput_unit: str  # of the throughput histogram's edges: s, min or h
    styles: list[StyleStats]
    failed: int
    failures: list[dict]  # the first max_failures failed rows, a few fields each
    sweep_grids: list[str] = field(default_factory=list)  # grid-sweep-NNN.png in the output
    unreadable: list[str] = field(default_factory=list)  # damaged files: "name: why"
    generated: str = field(
        default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    )
    # the run's throughput: manifest.throughput, the figure of run.json, --json and status
    images_per_hour: float | None = None
    grids: list[str] = field(default_factory=list)  # grid.png or grid-NNN.png in the output
    # _manifest/artfid.json (stylize quality OUTPUT --artfid DIR), None when not computed
    artfid: dict | None = None
