"""The report of a real run, opened in a real browser: headless Chromium from the operating
system's packages (Debian's ``chromium``, ``/usr/bin/chromium``; ``.ci/run`` installs it),
driven by Playwright for Python with that executable (``playwright install`` is never run: no
browser is downloaded). Skipped, saying why, only where either cannot be had.

Each page loads with no console error and no failed request, every image has pixels, the
counts shown are the manifest's, the failures table names the failed item with its message,
hovering a tile shows its content, clicking it shows content, style and result side by side,
and screenshots (not blank) are written next to the run.
"""

from __future__ import annotations

import os
import shutil
import urllib.parse
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pytest
from PIL import Image
from test_report import real_run

CHROMIUM = os.environ.get("STYLIZE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

sync_api = pytest.importorskip(
    "playwright.sync_api",
    reason="Playwright for Python is not installed (pip install "
    "playwright; the browser itself comes from the OS: apt-get install chromium)",
)
if not Path(CHROMIUM).is_file():
    pytest.skip(
        f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; or set "
        f"STYLIZE_CHROMIUM to a Chromium executable)",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        # root (CI containers) cannot use Chromium's sandbox
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        yield b
        b.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out, table, _ = real_run(tmp_path_factory.mktemp("report-browser"))
    shots = out.parent / "screenshots"
    shots.mkdir()
    return out, table, shots


def open_page(browser, path: Path, width: int = 1360):
    """The page at ``path``, loaded, and the list of problems seen while loading it."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    problems: list[str] = []
    page.on(
        "console",
        lambda m: (
            problems.append(f"console {m.type}: {m.text}")
            if m.type in ("error", "warning")
            else None
        ),
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url} ({r.failure})"))
    page.on(
        "response",
        lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None,
    )
    page.goto(path.as_uri(), wait_until="load")
    return page, problems


def images(page) -> list[dict]:
    return page.eval_on_selector_all(
        "img",
        """els => els.map(e => ({
        src: e.getAttribute('src'), complete: e.complete, width: e.naturalWidth}))""",
    )


def not_blank(png: Path) -> None:
    with Image.open(png) as img:
        pixels = np.asarray(img.convert("RGB"), dtype=np.float32)
    assert pixels.shape[0] > 400 and pixels.shape[1] > 400, pixels.shape
    assert pixels.std() > 20, f"{png}: nearly uniform (std {pixels.std():.1f})"
    colours = len(np.unique(pixels.reshape(-1, 3)[::7], axis=0))
    assert colours > 500, f"{png}: only {colours} colours: no pictures on it?"


def test_index_in_chromium(run, browser):
    out, table, shots = run
    page, problems = open_page(browser, out / "report" / "index.html")
    assert problems == []
    imgs = images(page)
    assert len(imgs) >= 6 + 6 + 2
    assert [i for i in imgs if not (i["complete"] and i["width"] > 0)] == []

    shown = page.eval_on_selector_all(
        "[data-count]",
        """els => Object.fromEntries(
        els.map(e => [e.dataset.count, e.querySelector('b').textContent]))""",
    )
    by_status = dict(zip(*[c.to_pylist() for c in pc.value_counts(table["status"]).flatten()]))
    assert {k: int(v.replace(",", "")) for k, v in shown.items()} == {
        "total": table.num_rows,
        "done": table.num_rows,
        **by_status,
    }

    failed = table.filter(pc.not_equal(table["status"], "ok")).to_pylist()
    assert page.locator("table.failures tbody tr").count() == len(failed) == 2
    for r in failed:
        row = page.locator(f'tr[data-item="{r["item_id"]}"]')
        assert row.is_visible()
        text = " ".join(row.inner_text().split())
        assert "corrupt.jpg" in text and r["status"] in text
        assert " ".join(r["error_message"].split()) in text

    page.screenshot(path=shots / "index.png", full_page=True)
    not_blank(shots / "index.png")
    page.close()


def test_hovering_a_tile_shows_its_content(run, browser):
    out, _, shots = run
    page, problems = open_page(browser, out / "report" / "style-0-1.html")
    tile = page.locator("figure.tile").first
    box = tile.locator(".pics").bounding_box()
    before = tile.locator("img.content").bounding_box()
    assert before["width"] < 0.5 * box["width"]  # an inset in the corner
    tile.hover()
    page.wait_for_timeout(400)  # the stylesheet's transition
    after = tile.locator("img.content").bounding_box()
    assert after["width"] > 0.95 * box["width"]  # the content, in full
    tile.screenshot(path=shots / "tile-hover.png")
    page.mouse.move(0, 0)
    page.wait_for_timeout(400)
    page.screenshot(path=shots / "style-0.png", full_page=True)
    not_blank(shots / "style-0.png")
    assert problems == []
    page.close()


def test_clicking_a_tile_shows_content_style_and_result_side_by_side(run, browser):
    """No script: the tile's link names its panel (#v-ITEM), which CSS shows (:target);
    the close link goes back to the tile and hides it."""
    out, _, shots = run
    page, problems = open_page(browser, out / "report" / "style-0-1.html")
    tile = page.locator("figure.tile").first
    item = tile.get_attribute("id")[len("t-") :]
    panel = page.locator(f"#v-{item}")
    assert not panel.is_visible()
    tile.locator("a.pics").click()
    assert panel.is_visible()
    boxes = [panel.locator(".three figure").nth(k).bounding_box() for k in range(3)]
    assert boxes[0]["x"] < boxes[1]["x"] < boxes[2]["x"]  # side by side, in one row
    assert abs(boxes[0]["y"] - boxes[2]["y"]) < 2
    captions = panel.locator(".three figcaption").all_inner_texts()
    assert [c.split(":")[0].split(" ")[0] for c in captions] == ["content", "style", "result"]
    shown = panel.locator("img").evaluate_all(
        "els => els.map(e => e.complete && e.naturalWidth > 0)"
    )
    assert shown == [True, True, True]
    page.screenshot(path=shots / "panel.png")
    not_blank(shots / "panel.png")
    full = panel.locator(".three figure").nth(2).locator("a").first.get_attribute("href")
    assert (out / "report" / urllib.parse.unquote(full)).resolve().is_file()
    panel.locator("a.close").click()
    assert not panel.is_visible()
    assert problems == []
    page.close()


def test_every_page_loads_clean(run, browser):
    out, _, _ = run
    paths = sorted((out / "report").glob("*.html"))
    assert len(paths) >= 3
    for path in paths:
        page, problems = open_page(browser, path, width=800)  # a narrow window too
        assert problems == [], path.name
        assert [i for i in images(page) if not (i["complete"] and i["width"] > 0)] == [], path.name
        # links to other pages of the report lead to files that exist
        for href in page.eval_on_selector_all("a[href]", "els => els.map(e => e.href)"):
            assert href.startswith("file://"), href
            assert Path(href[len("file://") :].split("#")[0]).is_file(), href
        page.close()
