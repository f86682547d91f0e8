"""The report's pages: :class:`report.RunFacts` in, HTML out (``render``); no I/O.

Every value from the run (file names, style names, messages) is escaped; every link is
relative: a page or thumbnail inside ``report/``, or ``../``: a full-size output, a contact
sheet of the run folder. Charts are inline SVG (charts.py). The only behaviour is CSS, no
script: hovering or focusing a gallery tile shows its content in full; clicking it opens
(``:target``) a panel of its content, style and result side by side.
"""

from __future__ import annotations

import html
import math
import posixpath
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pipeline.charts import bar_chart, line_chart, sci
from pipeline.manifest import THROUGHPUT_LABEL
from pipeline.reportfacts import ReportSettings, RunFacts, StyleStats
from pipeline.runfolder import REPORT_INDEX, RUN_FILE, SWEEP_GRID_SHOWN
from stylize.figures import FIGURES, MEANINGS

PALETTE = (
    "#0072b2",
    "#e69f00",
    "#009e73",
    "#cc79a7",
    "#56b4e9",
    "#d55e00",
    "#7f7f7f",
    "#f0c000",
)  # Okabe-Ito: told apart with colour blindness too
Made = Mapping[str, tuple[int, int]]  # thumbnail name -> (width, height), for those written


def render(facts: RunFacts, made: Made, settings: ReportSettings) -> dict[str, str]:
    """File name -> HTML: ``index.html``, the galleries and the failure pages."""
    states: dict[Any, str] = {0: "finished", 1: "finished with failures"}
    run_state = states.get(
        facts.run.get("exit_code"), "unfinished" if facts.total > facts.done else "finished"
    )
    subtitle = (
        f'<code>{_e(facts.output)}</code> · <span class="state">{run_state}</span> · '
        f"report made {facts.generated}"
    )
    title = f"stylize report: {_name(facts.output)}"
    files = {
        REPORT_INDEX: _page(
            title,
            subtitle,
            "".join(
                [
                    _summary(facts),
                    _job(facts),
                    _grids(facts),
                    _sweep(facts),
                    _styles(
                        facts.styles,
                        made,
                        settings,
                        _loss_meaning(facts.run) + _masked_figures(facts),
                        facts.artfid,
                    ),
                    _failures(facts, settings),
                    _figures(facts),
                    _all_curves(facts.styles, settings),
                ]
            ),
        )
    }
    if facts.failed > settings.index_failures:
        pages = _pages(len(facts.failures), settings.failures_per_page)
        for p in range(1, pages + 1):
            files[f"failures-{p}.html"] = _page(
                f"{title}: failures, page {p}", subtitle, _failure_page(facts, p, pages, settings)
            )
    for s in facts.styles:
        for p in range(1, s.pages + 1 if s.rows is not None else 1):
            files[f"style-{s.index}-{p}.html"] = _page(
                f"{title}: {s.name}",
                subtitle,
                _gallery(s, p, made, settings, _loss_meaning(facts.run)),
            )
    return files


# ------------------------------------------------------------------------------ formatting
def _e(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _num(v: float | None, digits: int = 3) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    if v == 0 or 1e-3 <= abs(v) < 1e5:
        return f"{v:,.{digits}g}" if abs(v) < 1000 else f"{v:,.0f}"
    return sci(v, digits)


def _duration(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "–"
    if s < 90:
        return f"{s:.1f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def _rate(v: float | None) -> str:
    """An images/h figure as every view prints it (one decimal)."""
    return "–" if v is None else f"{v:,.1f}"


def _name(uri: str) -> str:
    return posixpath.basename(uri.rstrip("/")) or uri


def _pages(n: int, per_page: int) -> int:
    return max(1, math.ceil(n / per_page))


def _page(title: str, subtitle: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{_e(title)}</title><link rel="stylesheet" href="report.css">'
        f'</head><body><header class="top"><div class="wrap"><h1>{_e(title)}</h1>'
        f'<p class="sub">{subtitle}</p></div></header><main class="wrap">{body}</main>'
        '<footer class="wrap">Made by <code>stylize report</code> from the run\'s manifest '
        f"and {RUN_FILE}; pictures are downscaled copies (<i>full size</i> opens an output "
        "itself).</footer></body></html>\n"
    )


def _pager(pages: int, current: int, href: Callable[[int], str]) -> str:
    if pages <= 1:
        return ""
    links = [f'<a href="{href(current - 1)}" rel="prev">‹ previous</a>'] if current > 1 else []
    links += [
        f'<span class="here">{p}</span>' if p == current else f'<a href="{href(p)}">{p}</a>'
        for p in range(1, pages + 1)
    ]
    if current < pages:
        links.append(f'<a href="{href(current + 1)}" rel="next">next ›</a>')
    return f'<nav class="pager">{" ".join(links)}</nav>'


def _img(made: Made, name: str | None, cls: str, alt: str) -> str:
    """An ``<img>`` of a thumbnail written, or a placeholder where there is none."""
    if name is None or name not in made:
        return f'<div class="{cls} missing">{_e(alt)}: no image</div>'
    w, h = made[name]
    return f'<img class="{cls}" src="thumbs/{name}" width="{w}" height="{h}" alt="{_e(alt)}">'


# ------------------------------------------------------------------------------ index
def _summary(f: RunFacts) -> str:
    cards = [("items", f.total, "total"), ("done", f.done, "done")]
    if f.total > f.done:
        cards.append(("left", f.total - f.done, "left"))
    cards += [(s, n, s) for s, n in sorted(f.counts.items(), key=lambda kv: (kv[0] != "ok", kv))]
    html_cards = "".join(
        f'<div class="card {"ok" if key == "ok" else "bad" if key.startswith("failed") else ""}"'
        f' data-count="{_e(key)}"><b>{n:,}</b><span>{_e(label)}</span></div>'
        for label, n, key in cards
    )
    timings = f.run.get("timings") or {}
    command_rate = timings.get("command_images_per_hour")
    # (key, the value, what it shows, the number itself): every key a figure of run.json
    figures = [
        ("images_per_hour", _rate(f.images_per_hour), THROUGHPUT_LABEL, f.images_per_hour),
        ("span_s", _duration(f.span_s if f.done else None), "first start to last finish", f.span_s),
        (
            "wall_s",
            _duration(timings.get("wall_s")),
            "wall time of the last stylize run, listing included"
            + (f" ({_rate(command_rate)} ok images/h)" if command_rate is not None else ""),
            timings.get("wall_s"),
        ),
        (
            "per_ok_s",
            _duration(f.per_ok_s),
            "worker time per ok image (its share of its batch)",
            f.per_ok_s,
        ),
    ]
    html_figures = "".join(
        f'<div class="figure" data-figure="{k}" data-value="{"" if n is None else n}">'
        f"<b>{_e(v)}</b><span>{_e(label)}</span></div>"
        for k, v, label, n in figures
    )
    damaged = "".join(f"<li><code>{_e(line)}</code></li>" for line in f.unreadable)
    note = (
        f'<div class="unreadable"><p>Could not be read (the rest is shown; the next run '
        f"moves these to <code>_quarantine/</code> and redoes what they held):</p>"
        f"<ul>{damaged}</ul></div>"
        if damaged
        else ""
    )
    return (
        f'<section class="summary"><div class="cards">{html_cards}</div>'
        f'<div class="figures">{html_figures}</div>{note}</section>'
    )


def _job(f: RunFacts) -> str:
    cfg = f.run.get("config") or {}
    engine = cfg.get("stylize") or {}
    rows = []
    inp = cfg.get("input")
    if inp is not None:
        shown = (
            inp
            if isinstance(inp, str)
            else ", ".join(inp[:5]) + (f" … ({len(inp)} in all)" if len(inp) > 5 else "")
        )
        rows.append(("input", f"<code>{_e(shown)}</code>"))
    rows += _dataset(cfg)
    rows.append(("output", f"<code>{_e(f.output)}</code>"))
    names = [s.name for s in f.styles]
    if cfg.get("masks"):  # an item's row names one style (the foreground's): the job's list
        names = [str(s.get("name")) for s in cfg.get("styles") or [] if isinstance(s, Mapping)]
    rows.append(
        (
            "styles",
            f"{len(names)}: " + _e(", ".join(names[:12])) + (" …" if len(names) > 12 else ""),
        )
    )
    if engine:
        rows.append(("preset", f"<b>{_e(engine.get('preset'))}</b>" + _options_diff(engine)))
        rows.append(
            (
                "weights",
                f"{_e(engine.get('weights') or '–')}, hash "
                f"<code>{_e(f.run.get('weights_hash') or '–')}</code>",
            )
        )
    if cfg.get("output_format"):
        rows.append(
            (
                "output format",
                _e(
                    f"{cfg['output_format']}, quality "
                    f"{cfg.get('output_quality')}, "
                    f"{cfg.get('output_bit_depth')}-bit"
                ),
            )
        )
    rows.append(("cluster", _cluster(f.run)))
    versions = f.run.get("versions") or {}
    if versions:
        rows.append(
            (
                "versions",
                " ".join(f'<span class="chip">{_e(k)} {_e(v)}</span>' for k, v in versions.items()),
            )
        )
    timings = f.run.get("timings") or {}
    if timings.get("started_at"):
        start, end = (
            str(timings.get(k, ""))[:19].replace("T", " ") for k in ("started_at", "finished_at")
        )
        rows.append(("last run", _e(f"{start} to {end} UTC")))
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<section class="job"><h2>Job</h2><table class="kv">{body}</table></section>'


def _masks(masks: Mapping) -> str:
    """The job's masks (spatial control): where they come from, which style goes where."""
    source = (
        f"each row's <code>{_e(masks.get('column'))}</code> column"
        if masks.get("column")
        else f"<code>{_e(masks.get('folder'))}</code> (the input tree, suffix "
        f"<code>{_e(masks.get('suffix') or '')}</code>)"
    )
    sides = [
        f"{side} ({tone}): {_e(masks.get(side) or 'the content kept')}"
        for side, tone in (("foreground", "white"), ("background", "black"))
    ]
    return f"from {source}; " + "; ".join(sides)


def _masked_figures(f: RunFacts) -> str:
    """What the quality figures of a run with masks compare (nothing without masks)."""
    masks = (f.run.get("config") or {}).get("masks")
    if not isinstance(masks, Mapping):
        return ""
    sides = " and ".join(
        f"{_e(masks[side])} where the mask is {tone}"
        for side, tone in (("foreground", "white"), ("background", "black"))
        if masks.get(side)
    )
    return (
        f'<p class="muted meaning">With masks, each item\'s style figures compare each side '
        f"with its own style ({sides}), weighted by the side's area; the content distance is "
        "the whole picture's.</p>"
    )


def _dataset(cfg: Mapping) -> list[tuple[str, str]]:
    """The job's dataset settings (run.json's config): which files, which pairs, where the
    results go."""
    rows = []
    ext = cfg.get("extensions")
    if ext is not None:
        rows.append(
            (
                "extensions",
                _e(
                    "every file"
                    if ext == "all"
                    else "the image files Pillow reads"
                    if ext == "images"
                    else ", ".join(ext)
                ),
            )
        )
    for key in ("input_column", "limit"):
        if cfg.get(key) is not None:
            rows.append((key.replace("_", " "), _e(cfg[key])))
    assign = cfg.get("assign")
    masks = cfg.get("masks")
    if isinstance(masks, Mapping):
        rows.append(("masks", _masks(masks)))
    elif isinstance(assign, Mapping):
        rows.append(
            (
                "assign",
                _e(f"{assign.get('random')} random styles per content (seed {assign.get('seed')})"),
            )
        )
    elif assign is not None:
        rows.append(
            (
                "assign",
                _e(
                    {
                        "all": "every content under every style",
                        "column": "each content's style from its list's style column",
                    }.get(assign, assign)
                ),
            )
        )
    if cfg.get("layout"):
        rows.append(("layout", _e(cfg["layout"])))
    if cfg.get("container"):
        rows.append(("container", _e(cfg["container"])))
    sweep = cfg.get("sweep")
    if sweep:
        rows.append(
            (
                "sweep",
                " ".join(
                    f'<span class="chip">{_e(k)}: {_e(", ".join(map(str, v)))}</span>'
                    for k, v in sweep.items()
                ),
            )
        )
    return rows


def _options_diff(engine: Mapping) -> str:
    """The engine options that differ from the preset's values."""
    from stylize.config import ConfigError, resolve_config

    try:
        base = resolve_config(engine.get("preset")).to_dict()
    except (ConfigError, TypeError, ValueError):
        return ""
    diff = {k: v for k, v in engine.items() if k != "preset" and base.get(k, v) != v}
    if not diff:
        return ' <span class="muted">(no option changed)</span>'
    return " + " + " ".join(
        f'<span class="chip">{_e(k)}: {_e(v)}</span>' for k, v in sorted(diff.items())
    )


def _grids(f: RunFacts, links: int = 40) -> str:
    """The run's contact sheets (the job key ``grid``): the first page shown, every page
    linked (up to ``links``)."""
    if not f.grids:
        return ""
    first = f.grids[0]
    pages = " ".join(f'<a href="../{_e(n)}">{_e(n)}</a>' for n in f.grids[:links])
    more = (
        f' <span class="muted">and {len(f.grids) - links:,} more in the output folder</span>'
        if len(f.grids) > links
        else ""
    )
    return (
        f'<section id="grid"><h2>Contact sheet <small>{len(f.grids):,} '
        f'page{"s" * (len(f.grids) != 1)}</small></h2><p class="muted">Click a page to '
        f'open it in full size.</p><p>{pages}{more}</p><a href="../{_e(first)}"><img class="sheet" '
        f'src="../{_e(first)}" alt="{_e(first)}"></a></section>'
    )


def _sweep(f: RunFacts, shown: int = 4) -> str:
    """A sweep's grid pages (content x style on the sweep's axes), from the output folder."""
    if not f.sweep_grids:
        return ""
    keys = ", ".join(_e(k) for k in (f.run.get("config") or {}).get("sweep") or {})
    pages = "".join(
        f'<a href="../{_e(n)}"><img class="sweep" src="../{_e(n)}" alt="{_e(n)}"></a>'
        for n in f.sweep_grids[:shown]
    )
    more = (
        f'<p class="muted">and {len(f.sweep_grids) - shown} more pages: '
        f"<code>{SWEEP_GRID_SHOWN}</code> in the output folder</p>"
        if len(f.sweep_grids) > shown
        else ""
    )
    return (
        f'<section><h2>Sweep <small>{keys}</small></h2><p class="muted">Each page: one '
        f"content under one style, on the sweep's axes.</p>{pages}{more}</section>"
    )


def _cluster(run: Mapping) -> str:
    res = run.get("cluster_resources") or {}
    devices: dict[str, int] = {}
    for w in run.get("workers") or []:
        devices[w.get("device", "?")] = devices.get(w.get("device", "?"), 0) + 1
    who = ", ".join(f"{n} × {d}" for d, n in devices.items()) or "–"
    if not res:
        return _e(f"this process (no Ray); workers: {who}")
    nodes = sum(1 for k in res if k.startswith("node:") and "internal" not in k)
    parts = [
        f"{nodes} node{'s' * (nodes != 1)}" if nodes else "",
        f"{res.get('CPU', 0):g} CPU",
        f"{res.get('GPU', 0):g} GPU",
        f"{res.get('memory', 0) / 2**30:.0f} GiB memory" if res.get("memory") else "",
    ]
    return _e(", ".join(p for p in parts if p) + f"; workers: {who}")


def _loss_meaning(run: Mapping) -> str:
    """What the content and style losses measure, in one line each (from the engine options
    the run was made with)."""
    from stylize.config import CONTENT_LAYERS_GATYS

    engine = (run.get("config") or {}).get("stylize") or {}
    layers = ", ".join(engine.get("content_layers") or CONTENT_LAYERS_GATYS)
    meanings: dict[Any, str] = {
        "mean_std": "its features' means and deviations are",
        "wasserstein2": "its feature distributions are (Wasserstein-2)",
    }
    style = meanings.get(engine.get("style_loss"), "its Gram matrices are")
    return (
        f'<p class="muted meaning"><b>content loss</b>: how far the result\'s '
        f"{_e(layers)} features are from the photo's; <b>style loss</b>: how far "
        f"{_e(style)} from the painting's. Lower is closer; the total weighs them "
        f"(and total variation) by the job's weights.</p>"
    )


def _tile(row: Mapping, made: Made) -> str:
    """A result with its content in the corner; a click opens its panel (:func:`_panel`)."""
    meta = (
        f"loss {_num(row.get('total_loss'))} · {row.get('iterations') or 0} it · "
        f"{_duration(row.get('duration_s'))}"
    )
    name, content = _name(row["content_uri"]), row.get("thumb_content")
    item = _e(row["item_id"])
    inset = (
        f'{_img(made, content, "content", f"content: {name}")}<span class="flag">content</span>'
        if content in made
        else ""
    )
    full = (
        f' · <a class="full" href="{_e(row["href_result"])}">full size</a>'
        if row.get("href_result")
        else ""
    )
    return (
        f'<figure class="tile" id="t-{item}" title="{_e(row["content_uri"])}">'
        f'<a class="pics" href="#v-{item}" aria-label="{_e(name)}: content, style and '
        f'result side by side">'
        f"{_img(made, row.get('thumb_result'), 'result', f'result: {name}')}{inset}</a>"
        f'<figcaption><span class="name">{_e(name)}</span>'
        f'<span class="meta">{_e(meta)}{full}</span></figcaption></figure>'
    )


def _panel(row: Mapping, s: StyleStats, made: Made) -> str:
    """Content, style and result side by side, shown while the URL's fragment names it
    (``:target``); the result links to the full-size output."""
    name, item = _name(row["content_uri"]), _e(row["item_id"])
    result = _img(made, row.get("thumb_result"), "side", f"result: {name}")
    href = row.get("href_result")
    if href:
        result = f'<a href="{_e(href)}">{result}</a>'
    losses = (
        f"loss {_num(row.get('total_loss'))}: content {_num(row.get('content_loss'))}, "
        f"style {_num(row.get('style_loss'))} · {row.get('iterations') or 0} it"
    )
    cells = [
        (_img(made, row.get("thumb_content"), "side", f"content: {name}"), f"content: {_e(name)}"),
        (_img(made, s.thumb, "side", f"style: {s.name}"), f"style: {_e(s.name)}"),
        (
            result,
            "result"
            + (
                f' · <a href="{_e(href)}">full size</a>'
                if href
                else ' <span class="muted">(in its shard tar)</span>'
            ),
        ),
    ]
    figures = "".join(f"<figure>{pic}<figcaption>{cap}</figcaption></figure>" for pic, cap in cells)
    return (
        f'<div class="panel" id="v-{item}" role="dialog" aria-label="{_e(name)}">'
        f'<a class="shade" href="#t-{item}" aria-label="close"></a><div class="box">'
        f'<div class="box-head"><span><b>{_e(name)}</b> under <b>{_e(s.name)}</b> · '
        f'<span class="muted">{_e(losses)}</span></span>'
        f'<a class="close" href="#t-{item}">close ×</a></div>'
        f'<div class="three">{figures}</div>'
        f'<p class="muted path">{_e(row["content_uri"])}</p></div></div>'
    )


def _tiles(rows: Sequence[Mapping], s: StyleStats, made: Made) -> tuple[str, str]:
    """(the tiles, their panels) of ``rows``."""
    return ("".join(_tile(r, made) for r in rows), "".join(_panel(r, s, made) for r in rows))


def _style_line(s: StyleStats) -> str:
    line = (
        f"{s.ok:,} ok of {s.items:,} · median loss {_num(s.loss_median)} (content "
        f"{_num(s.content_loss_median)}, style {_num(s.style_loss_median)}) · "
        f"{_num(s.iterations_mean)} it · {_duration(s.seconds_mean)}/item"
    )
    if any(v is not None for v in s.figures.values()):  # see the quality figures table
        line += " · distances: " + ", ".join(
            f"{SHORT[f]} {_num(s.figures.get(f))}" for f in FIGURES
        )
    return line


# each quality figure's name in a style's line (stylize.figures.FIGURES)
SHORT = {
    "content_distance": "content",
    "gram_distance": "Gram",
    "w2_distance": "W2",
    "color_distance": "colour",
}


HINT = (
    "Each tile is a result with its content in the corner: hover or focus it to see the "
    "content in full, click it for content, style and result side by side."
)


def _artfid(artfid: dict | None) -> str:
    """The run's ArtFID line (_manifest/artfid.json), nothing when it was not computed."""
    if not artfid:
        return ""
    why = f" ({_e(str(artfid['why']))})" if artfid.get("why") else ""
    return (
        f'<p id="artfid"><b>ArtFID</b> {_num(artfid.get("artfid"))}: (1 + LPIPS '
        f"{_num(artfid.get('lpips'))}) &times; (1 + FID {_num(artfid.get('fid'))}), "
        f"{_num(artfid.get('items'))} items against {_num(artfid.get('styles'))} style(s), "
        f"{_e(str(artfid.get('inception')))} Inception{why}. Lower is better; compare only "
        "runs with as many items and styles (stylize quality OUTPUT --artfid DIR).</p>"
    )


def _figures_table(styles: list[StyleStats], artfid: dict | None = None) -> str:
    """Median quality figures per style (fixed layers: comparable across runs), with what
    each means, and the run's ArtFID when computed; nothing when no item has them (older
    runs)."""
    if not any(v is not None for s in styles for v in s.figures.values()):
        return _artfid(artfid)
    head = "".join(f"<th>median {f.replace('_', ' ')}</th>" for f in FIGURES)
    rows = "".join(
        f"<tr><td>{_e(s.name)}</td>"
        + "".join(f"<td class=n>{_num(s.figures.get(f))}</td>" for f in FIGURES)
        + "</tr>"
        for s in styles
    )
    meanings = "; ".join(f"<b>{f.replace('_', ' ')}</b>: {_e(MEANINGS[f])}" for f in FIGURES)
    return (
        '<h3 id="figures">Quality figures</h3><table class="grid-table"><thead><tr>'
        f"<th>style</th>{head}</tr></thead><tbody>{rows}</tbody></table>"
        f'<p class="muted meaning">{meanings}. The same layers and normalisations in every '
        "run (stylize quality OUTPUT recomputes them).</p>" + _artfid(artfid)
    )


def _styles(
    styles: list[StyleStats],
    made: Made,
    settings: ReportSettings,
    meaning: str,
    artfid: dict | None = None,
) -> str:
    cards, panels = [], []
    for s in styles[: settings.index_styles]:
        if s.rows is None:
            continue
        tiles, more = _tiles(s.rows[: settings.preview], s, made)
        panels.append(more)
        cards.append(
            f'<article class="style" id="style-{s.index}"><div class="style-head">'
            f"{_img(made, s.thumb, 'style-img', s.name)}"
            f'<div><h3><a href="style-{s.index}-1.html">{_e(s.name)}</a></h3>'
            f'<p>{_style_line(s)}</p><a class="more" href="style-{s.index}-1.html">gallery: '
            f"{len(s.rows)} of {s.ok:,} ok ›</a></div></div>"
            f'<div class="strip">{tiles or "<p class=muted>no ok item</p>"}</div></article>'
        )
    rows = []
    for s in styles[: settings.max_table_styles]:
        link = (
            f'<a href="style-{s.index}-1.html">{_e(s.name)}</a>'
            if s.rows is not None
            else _e(s.name)
        )
        rows.append(
            f"<tr><td>{link}</td><td class=n>{s.items:,}</td><td class=n>{s.ok:,}</td>"
            f"<td class=n>{s.items - s.ok:,}</td><td class=n>{_num(s.loss_median)}</td>"
            f"<td class=n>{_num(s.content_loss_median)}</td>"
            f"<td class=n>{_num(s.style_loss_median)}</td>"
            f"<td class=n>{_num(s.iterations_mean)}</td>"
            f"<td class=n>{_duration(s.seconds_mean)}</td></tr>"
        )
    more = (
        f'<p class="muted">… and {len(styles) - settings.max_table_styles:,} more styles '
        f"(see the manifest)</p>"
        if len(styles) > settings.max_table_styles
        else ""
    )
    table = (
        '<table class="grid-table"><thead><tr><th>style</th><th>items</th><th>ok</th>'
        "<th>failed</th><th>median loss</th><th>median content loss</th>"
        "<th>median style loss</th><th>mean iterations</th><th>mean time</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>{meaning}{more}"
        f"{_figures_table(styles[: settings.max_table_styles], artfid)}"
    )
    return (
        f"<section><h2>Styles <small>{len(styles):,}</small></h2>"
        f'<p class="muted">{HINT}</p>{"".join(cards)}{table}{"".join(panels)}</section>'
    )


def _figures(f: RunFacts) -> str:
    h = f.histograms
    charts = [
        ("Final loss", bar_chart(*h["loss"], "total loss (log scale)", "items", log_x=True)),
        ("Iterations", bar_chart(*h["iterations"], "iterations", "items", integer=True)),
        ("Seconds per item", bar_chart(*h["seconds"], "seconds (share of its batch)", "items")),
        (
            "Throughput over time",
            bar_chart(
                *h["throughput"], f"elapsed ({f.throughput_unit})", "images/h", fill="#009e73"
            ),
        ),
    ]
    cells = "".join(
        f'<figure class="chart"><figcaption>{_e(t)}</figcaption>{svg}</figure>' for t, svg in charts
    )
    ok = f.counts.get("ok", 0)
    return (
        f"<section><h2>Figures <small>{ok:,} ok items</small></h2>"
        f'<div class="charts">{cells}</div></section>'
    )


def _curves(s: StyleStats, settings: ReportSettings) -> str:
    """Loss curves of the first of the style's gallery items (the manifest's loss_trace)."""
    series: list[tuple[list[float], list[float], str, str]] = []
    for row in s.rows or []:
        trace = [v for v in (row.get("loss_trace") or []) if v is not None]
        if len(trace) < 2 or not all(v > 0 and math.isfinite(v) for v in trace):
            continue
        n, iters = len(trace), row.get("iterations") or len(trace)
        series.append(
            (
                [iters * k / (n - 1) for k in range(n)],
                [math.log10(v) for v in trace],
                _name(row["content_uri"]),
                PALETTE[len(series) % len(PALETTE)],
            )
        )
        if len(series) == settings.curves_per_style:
            break
    if not series:
        return ""
    legend = "".join(
        f'<li title="{_e(label)}"><i style="background:{c}"></i>{_e(label)}</li>'
        for _, _, label, c in series
    )
    svg = line_chart(series, "iteration", "total loss (log scale)", log_y=True)
    return (
        f'<figure class="chart curves"><figcaption>{_e(s.name)}: loss curves</figcaption>'
        f'{svg}<ul class="legend">{legend}</ul></figure>'
    )


def _all_curves(styles: list[StyleStats], settings: ReportSettings) -> str:
    charts = "".join(_curves(s, settings) for s in styles[: settings.curve_charts])
    if not charts:
        return ""
    return (
        f"<section><h2>Loss curves <small>a sample per style</small></h2>"
        f'<div class="charts">{charts}</div></section>'
    )


# ------------------------------------------------------------------------------ failures
def _failure_table(rows: Sequence[Mapping]) -> str:
    body = "".join(
        f'<tr class="failure" data-item="{_e(r["item_id"])}">'
        f'<td><span class="name" title="{_e(r["content_uri"])}">{_e(_name(r["content_uri"]))}'
        f'</span><br><span class="muted">{_e(r["style"])}</span></td>'
        f'<td><span class="status {_e(r["status"])}">{_e(r["status"])}</span></td>'
        f'<td class="message">{_e(r["error_message"])}</td><td class=n>{r["attempt"]}</td>'
        f'<td class="worker">{_e(r["worker"] or "–")}</td></tr>'
        for r in rows
    )
    return (
        '<table class="failures"><thead><tr><th>item</th><th>status</th><th>message</th>'
        f"<th>attempt</th><th>worker</th></tr></thead><tbody>{body}</tbody></table>"
    )


def _failures(f: RunFacts, settings: ReportSettings) -> str:
    """The index's failures: counts by status, the first few rows, a link to the pages."""
    if not f.failed:
        return '<section id="failures"><h2>Failures</h2><p>None: every item is ok.</p></section>'
    by_status = " ".join(
        f'<span class="status {_e(s)}">{_e(s)} {c:,}</span>'
        for s, c in sorted(f.counts.items())
        if s != "ok"
    )
    shown = f.failures[: settings.index_failures]
    note = ""
    if f.failed > len(shown):
        pages = _pages(len(f.failures), settings.failures_per_page)
        note = (
            f'<p>The first {len(shown)} are below; <a href="failures-1.html">the first '
            f"{len(f.failures):,} of {f.failed:,} on {pages} page{'s' * (pages > 1)} ›</a>"
            f"{' (the manifest has them all)' if f.failed > len(f.failures) else ''}</p>"
        )
    return (
        f'<section id="failures"><h2>Failures <small>{f.failed:,}</small></h2>'
        f"<p>{by_status}</p>{note}{_failure_table(shown)}</section>"
    )


def _failure_page(f: RunFacts, page: int, pages: int, settings: ReportSettings) -> str:
    per = settings.failures_per_page
    pager = _pager(pages, page, lambda p: f"failures-{p}.html")
    listed = (
        f"; the first {len(f.failures):,} are listed here, the manifest has them all"
        if f.failed > len(f.failures)
        else ""
    )
    return (
        f'<p><a href="{REPORT_INDEX}#failures">‹ back to the report</a></p>'
        f"<section><h2>Failures <small>{(page - 1) * per + 1:,} to "
        f"{min(page * per, len(f.failures)):,} of {f.failed:,}{listed}</small></h2>{pager}"
        f"{_failure_table(f.failures[(page - 1) * per : page * per])}{pager}</section>"
    )


# ------------------------------------------------------------------------------ galleries
def _gallery(s: StyleStats, page: int, made: Made, settings: ReportSettings, meaning: str) -> str:
    rows = (s.rows or [])[(page - 1) * settings.per_page : page * settings.per_page]
    pager = _pager(s.pages, page, lambda p: f"style-{s.index}-{p}.html")
    curves = _curves(s, settings) if page == 1 else ""
    tiles, panels = _tiles(rows, s, made)
    return (
        f'<p><a href="{REPORT_INDEX}#style-{s.index}">‹ back to the report</a></p>'
        f'<section><div class="style-head">{_img(made, s.thumb, "style-img", s.name)}'
        f'<div><h2>{_e(s.name)}</h2><p>{_style_line(s)}</p><p class="muted">'
        f"{len(s.rows or []):,} of its ok items (a reproducible sample), page {page} of "
        f"{s.pages}. {HINT}</p></div></div>{pager}"
        f'<div class="gallery">{tiles}</div>{pager}{meaning}'
        f"{f'<div class=charts>{curves}</div>' if curves else ''}{panels}</section>"
    )
