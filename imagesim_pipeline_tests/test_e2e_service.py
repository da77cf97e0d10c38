"""End to end: `imagesim serve` over the indexed demo world, driven in Debian's headless chromium."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from imagesim_pipeline.chips.naming import ChipName, chip_key
from imagesim_pipeline.settings import PROJECT_ROOT
from imagesim_pipeline.storage import open_bucket
from imagesim_pipeline_tests.conftest import CHROMIUM_ARGS, chromium, free_port, stop_process_group, wait_for_port

RESULT_CHIPS = "() => [...document.querySelectorAll('#results li.result')].map(li => li.dataset.chip)"
THUMBNAILS_DRAWN = """(n) => {
  const imgs = [...document.querySelectorAll('#results li.result img')];
  return imgs.length >= n && imgs.slice(0, n).every(i => i.complete && i.naturalWidth > 0);
}"""
QUERY_THUMB_DRAWN = """(chip) => { const i = document.querySelector('#query-thumbs img');
  return !!i && (chip ? i.dataset.chip === chip : i.src.startsWith('blob:')) && i.complete && i.naturalWidth > 0; }"""
# every result card's date and buttons sit on one line each (no "2023-/06-15", no "+ more / like")
CARDS_UNBROKEN = """() => [...document.querySelectorAll('#results li.result')].every(li =>
  [li.querySelector('.date'), ...li.querySelectorAll('.mark button')].every(el => {
    const range = document.createRange();
    range.selectNodeContents(el);
    return new Set([...range.getClientRects()].map(r => Math.round(r.top))).size === 1;
  }))"""
SEARCHED = """() => { const s = document.getElementById('status').textContent;
  return s.includes('results in') && document.querySelectorAll('#results li.result').length > 0; }"""
CENTER_IN = """([w, s, e, n]) => { const c = window.imagesim.map.getCenter();
  return c.lng > w && c.lng < e && c.lat > s && c.lat < n; }"""
TILES_DRAWN = """() => [...document.querySelectorAll('img.leaflet-tile-loaded')]
  .filter(i => i.src.includes('/tiles/') && i.naturalWidth === 256).length >= 2"""


def test_click_a_chip_search_mark_a_negative_and_search_again(demo_index, tmp_path):
    from playwright.sync_api import sync_playwright

    root, version = demo_index
    browser_path = chromium()
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "imagesim"), "serve", "--port", str(port), "--bucket", str(root),
         "--version", version], cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={k: v for k, v in os.environ.items() if k != "IMAGESIM_BUCKET"})
    try:
        wait_for_port(port, server, timeout=120)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=browser_path, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            failed_scripts: list[str] = []
            page.on("requestfailed", lambda r: failed_scripts.append(r.url) if r.resource_type == "script" else None)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function(TILES_DRAWN, timeout=60_000)  # the ARD imagery is the base layer
            assert version in page.inner_text("#versions")
            page.wait_for_selector("path.chip-outline", timeout=30_000)
            outlines = page.locator("path.chip-outline")
            outlines.nth(outlines.count() // 2).click(force=True)
            page.wait_for_function(THUMBNAILS_DRAWN, arg=5, timeout=30_000)
            first = page.evaluate(RESULT_CHIPS)
            query = page.evaluate("() => window.imagesim.state.positives[0]")
            assert len(first) >= 5 and ChipName.parse(query).cell.id not in {ChipName.parse(c).cell.id for c in first}
            assert "results in" in page.inner_text("#status") and version in page.inner_text("#status")

            negative = first[0]
            page.locator("#results li.result").nth(0).locator("button.mark-negative").click()
            assert page.locator("#examples .example.neg").count() == 1
            page.click("#search-again")
            page.wait_for_function(f"(before) => {{ const now = ({RESULT_CHIPS})(); "
                                   "return now.length >= 5 && JSON.stringify(now) !== JSON.stringify(before); }",
                                   arg=first, timeout=30_000)
            page.wait_for_function(THUMBNAILS_DRAWN, arg=5, timeout=30_000)
            second = page.evaluate(RESULT_CHIPS)
            assert ChipName.parse(negative).cell.id not in {ChipName.parse(c).cell.id for c in second}
            assert page.locator("path.result-outline").count() == len(second)
            # the query chip is shown above the results; the cards do not break their dates or buttons
            page.wait_for_function(QUERY_THUMB_DRAWN, arg=query, timeout=10_000)
            assert page.evaluate(CARDS_UNBROKEN)

            # a changed filter runs the search again: a later date, then a label
            days = sorted({h["date"] for h in page.evaluate("() => window.imagesim.state.hits")})
            assert len(days) > 1, days
            with page.expect_request(lambda r: r.url.endswith("/api/search") and r.method == "POST"):
                page.fill("#since", days[-1])
            page.wait_for_function("(day) => { const hits = window.imagesim.state.hits; "
                                   "return hits.length > 0 && hits.every(h => h.date >= day); }", arg=days[-1],
                                   timeout=30_000)
            label = page.evaluate("() => window.imagesim.state.hits[0].labels[0].label")
            with page.expect_request(lambda r: r.url.endswith("/api/search") and r.method == "POST"):
                page.select_option("#labels", label)
            page.wait_for_function("(label) => { const hits = window.imagesim.state.hits; return hits.length > 0 && "
                                   "hits.every(h => h.labels.some(l => l.label === label)); }", arg=label,
                                   timeout=30_000)

            # search by an uploaded image (a result's own JPEG: it comes back first), with the same filters
            target = page.evaluate("() => window.imagesim.state.hits[0].chip")
            jpeg = open_bucket(root).read_bytes(chip_key(ChipName.parse(target)))
            with page.expect_response(lambda r: "/api/search/image?" in r.url) as uploaded:
                page.set_input_files("#upload", files=[{"name": "query.jpg", "mimeType": "image/jpeg",
                                                        "buffer": jpeg}])
            assert uploaded.value.status == 200 and f"since={days[-1]}" in uploaded.value.url
            assert "label=" in uploaded.value.url
            page.wait_for_function(SEARCHED, timeout=30_000)
            top = page.evaluate("() => window.imagesim.state.hits[0]")
            assert top["chip"] == target and top["score"] > 0.99
            page.wait_for_function(QUERY_THUMB_DRAWN, arg="", timeout=10_000)
            assert page.evaluate(CARDS_UNBROKEN)
            # a changed place: nothing shown before asking (no broken images), then before, after and its map
            assert not page.locator("#change-detail").is_visible() and page.locator("#changes-empty").is_visible()
            page.click("#load-changes")
            page.locator("#changes li").first.click()
            page.wait_for_function("() => ['before-img', 'after-img', 'map-img'].every(id => { const i = "
                                   "document.getElementById(id); return i.complete && i.naturalWidth > 0; })",
                                   timeout=30_000)
            assert "/map.png" in page.evaluate("() => document.getElementById('map-img').src")
            assert page.locator("#map-img").is_visible() and "place Z" in page.inner_text("#change-place")
            page.click("#map-toggle")
            assert not page.locator("#map-img").is_visible()
            before, after = page.evaluate("() => [document.getElementById('before-img').src, "
                                          "document.getElementById('after-img').src]")
            assert ChipName.parse(before.rsplit("/", 2)[1]).cell == ChipName.parse(after.rsplit("/", 2)[1]).cell
            assert before != after
            page.screenshot(path=str(tmp_path / "search-page.png"))

            # the area picker moves the map over each delivered area
            areas = page.evaluate("() => window.imagesim.state.areas")
            assert {"HELSINKI", "KOTKA"} <= {a["name"] for a in areas}
            for i, area in enumerate(areas):
                page.select_option("#region", str(i))
                page.wait_for_function(CENTER_IN, arg=area["bounds"], timeout=10_000)
            assert not failed_scripts
            browser.close()
    finally:
        stop_process_group(server)
        log.close()
    assert server.poll() is not None
