"""Every report is readable at 1280 px: no table widens the page (a wide table scrolls inside
its own box, long text wraps, a wide table with few rows is transposed) and the headline
figures are on the first screen. `assert_readable_at_1280` is the check, for any report."""

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from test_report import browser, launch

from unweave.report import Report

WIDTH, HEIGHT = 1280, 800

# the first occurrence (in document order) of each text, as a text node, its box, and whether
# a box that clips it (a scrolling table box) hides part of it
_FIND_TEXT = """
(texts) => {
  const found = {};
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const text = node.data.trim();
    if (!texts.includes(text) || text in found) continue;
    const range = document.createRange();
    range.selectNodeContents(node);
    const r = range.getBoundingClientRect();
    let clipped = false;
    for (let el = node.parentElement; el && el !== document.documentElement; el = el.parentElement) {
      const style = getComputedStyle(el);
      if (style.overflowX === "visible" && style.overflowY === "visible") continue;
      const c = el.getBoundingClientRect();
      if (r.left < c.left - 1 || r.right > c.right + 1 || r.top < c.top - 1 || r.bottom > c.bottom + 1) clipped = true;
    }
    found[text] = {left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width, clipped};
  }
  return found;
}
"""


def assert_readable_at_1280(page_path, headline_texts):
    """Open a report at 1280x800 in headless Chromium and check that the page never scrolls
    sideways, that no table box runs past the right edge, and that each headline text (its
    first occurrence) is on the first screen, not hidden in a scrolling box. Writes a
    screenshot of that first screen next to the file (.png). Returns the console errors and
    warnings and the page's uncaught errors, for the caller to check."""
    from playwright.sync_api import sync_playwright

    page_path = Path(page_path)
    with sync_playwright() as pw:
        chromium = launch(pw)
        try:
            page = chromium.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            errors = []
            page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(page_path.resolve().as_uri())
            page.wait_for_load_state("load")
            page.screenshot(path=str(page_path.with_suffix(".png")))
            scroll_width = page.evaluate("document.documentElement.scrollWidth")
            assert scroll_width <= WIDTH, f"{page_path.name} is {scroll_width} px wide: the page scrolls sideways"
            rights = page.eval_on_selector_all(".table-wrap", "els => els.map(e => e.getBoundingClientRect().right)")
            assert all(right <= WIDTH for right in rights), f"a table box runs past {WIDTH} px: {rights}"
            boxes = page.evaluate(_FIND_TEXT, list(headline_texts))
            for text in headline_texts:
                assert text in boxes, f"headline {text!r} is not on the page"
                box = boxes[text]
                assert box["width"] > 0, f"headline {text!r} is not shown"
                assert 0 <= box["left"] and box["right"] <= WIDTH, f"headline {text!r} is off the side: {box}"
                assert box["bottom"] <= HEIGHT, f"headline {text!r} is below the first screen: {box}"
                assert not box["clipped"], f"headline {text!r} is hidden in a box that scrolls: {box}"
            return errors
        finally:
            chromium.close()


# ----------------------------------------------------------------------------- unit tests


class _Tables(HTMLParser):
    """Every table of a page as a list of rows, each a list of (tag, text) cells."""

    def __init__(self):
        super().__init__()
        self.tables, self.cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.cell = [tag, ""]

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.tables[-1][-1].append(tuple(self.cell))
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell[1] += data


def tables(section):
    parser = _Tables()
    parser.feed(section.html())
    return parser.tables


METRICS = [
    "fvu_all_tokens_spliced",
    "fvu",
    "mse",
    "l0",
    "dead_fraction",
    "dense_fraction",
    "tokens",
    "passed_through_fraction",
    "ce_model",
    "ce_spliced",
    "ce_zero_ablation",
    "kl",
    "ce_loss_recovered",
]
DESCRIPTION = (
    "held-out text: the 4096 tokens of wikitext-103 that come after the tokens this dictionary was trained on, "
    "in contexts of 128 tokens each, with no overlap"
)
assert len(DESCRIPTION) >= 150


def sae_eval_rows():
    """Two rows shaped like `unweave sae eval`'s metrics: 15 columns, a long text among them."""
    rows = []
    for i, name in enumerate(("dict-a", "dict-b")):
        row = {"dictionary": name, "text": DESCRIPTION}
        row.update({m: round(0.1 + 0.05 * j + 0.3 * i, 4) for j, m in enumerate(METRICS)})
        row.update(tokens=4096, l0=31.25 + i, kl=0.0123 + 0.1 * i, ce_loss_recovered=0.9953 - 0.1 * i)
        rows.append(row)
    return rows


def wide_rows(n_rows=40, n_columns=12):
    return [
        {"run": f"run-{r:02d}", **{f"metric_column_{c:02d}": 1234.5 * (r + 1) + c for c in range(1, n_columns)}}
        for r in range(n_rows)
    ]


def test_a_wide_table_with_few_rows_is_transposed():
    rows = sae_eval_rows()
    assert len(rows[0]) == 15
    section = Report("t").section("s").table(rows)
    assert '<table class="transposed">' in section.html()
    [table] = tables(section)
    assert table[0] == [("th", "dictionary"), ("th", "dict-a"), ("th", "dict-b")]
    assert [row[0] for row in table[1:]] == [("th", h) for h in list(rows[0])[1:]]
    by_name = {row[0][1]: [text for _, text in row[1:]] for row in table[1:]}
    assert by_name["text"] == [DESCRIPTION, DESCRIPTION]
    assert by_name["ce_loss_recovered"] == ["0.9953", "0.8953"]
    assert by_name["kl"] == ["0.0123", "0.1123"]
    assert by_name["tokens"] == ["4096", "4096"]
    assert all(len(row) == 3 for row in table)


def test_the_transposed_table_keeps_its_links_and_escapes():
    rows = [{"name": f"<{n}>", "href": f"{n}.html?a=1&b=2", **{f"m{i}": i + 0.5 for i in range(9)}} for n in "ab"]
    html = Report("t").section("s").table(rows, links={"name": "href"}).html()
    assert '<th scope="col"><a href="a.html?a=1&amp;b=2">&lt;a&gt;</a></th>' in html
    [table] = tables(Report("t").section("s").table(rows, links={"name": "href"}))
    assert table[0] == [("th", "name"), ("th", "<a>"), ("th", "<b>")]
    assert "href" not in [text for row in table for _, text in row]  # the address column is not shown


@pytest.mark.parametrize(
    "n_columns, n_rows, kwargs, transposed",
    [
        (15, 2, {}, True),
        (9, 6, {}, True),
        (5, 2, {}, False),  # narrow
        (8, 2, {}, False),  # 8 columns fit
        (15, 7, {}, False),  # too many rows to transpose: it scrolls in its box
        (15, 2, {"sortable": True}, False),  # a sortable table keeps its columns
        (5, 2, {"transpose": True}, True),
        (15, 2, {"transpose": False}, False),
    ],
)
def test_when_a_table_is_transposed(n_columns, n_rows, kwargs, transposed):
    rows = [{f"c{c}": r * 10 + c for c in range(n_columns)} for r in range(n_rows)]
    html = Report("t").section("s").table(rows, **kwargs).html()
    assert ('class="transposed"' in html) == transposed
    [table] = tables(Report("t").section("s").table(rows, **kwargs))
    assert (len(table), len(table[0])) == ((n_columns, n_rows + 1) if transposed else (n_rows + 1, n_columns))


def test_hidden_link_columns_do_not_count_and_sortable_cannot_be_transposed():
    rows = [{"name": "a", "href": "a.html", **{f"m{i}": i for i in range(7)}}]  # 8 shown, 9 keys
    assert "transposed" not in Report("t").section("s").table(rows, links={"name": "href"}).html()
    with pytest.raises(ValueError, match="sortable"):
        Report("t").section("s").table(rows, sortable=True, transpose=True)


def test_every_table_is_in_a_scrolling_box_and_cells_are_classed():
    html = Report("t").section("s").table([{"name": "x", "n": 3, "v": 0.5, "ok": True, "long": "w " * 30}]).html()
    assert html.count('<div class="table-wrap"><table>') == 1 and html.count("</table></div>") == 1
    assert '<td>x</td><td class="num">3</td><td class="num">0.5</td><td>True</td><td class="long">' in html
    page = Report("t").html()
    assert re.search(r"\.table-wrap \{[^}]*overflow-x: auto", page) and "max-width: 100%" in page
    assert "td { white-space: nowrap; }" in page and re.search(
        r"td\.long \{ white-space: normal;[^}]*overflow-wrap: anywhere", page
    )


def test_headline_figures():
    html = Report("t").summary().headline({"CE loss recovered": 0.99531, "L0 <": 31}).html()
    assert '<span class="value">0.9953</span><span class="label">CE loss recovered</span>' in html
    assert "L0 &lt;" in html
    assert 'class="headline"' not in Report("t").summary().headline({}).html()


# ----------------------------------------------------------------------------- in a browser


def sae_eval_like_report(path):
    report = Report("unweave sae eval")
    report.summary("Metrics").table(sae_eval_rows())
    report.section("Every run").text("A wide table with many rows: it scrolls inside its own box.").table(wide_rows())
    return report.write(path)


@browser
@pytest.mark.browser
def test_a_report_with_wide_tables_is_readable_at_1280(tmp_path):
    from playwright.sync_api import sync_playwright

    path = sae_eval_like_report(tmp_path / "sae_eval.html")
    errors = assert_readable_at_1280(path, ["0.9953", "0.0123", "dict-a", "dict-b"])
    assert errors == []
    assert path.with_suffix(".png").stat().st_size > 10_000
    with sync_playwright() as pw:  # the wide table is there, and scrolls inside its own box
        chromium = launch(pw)
        try:
            page = chromium.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            page.goto(path.resolve().as_uri())
            boxes = page.eval_on_selector_all(
                ".table-wrap", "els => els.map(e => [e.scrollWidth, e.clientWidth, e.querySelector('table').className])"
            )
            (summary_scroll, summary_client, summary_cls), (wide_scroll, wide_client, wide_cls) = boxes
            assert summary_cls == "transposed" and summary_scroll <= summary_client  # fits, no scrolling
            assert wide_cls == "" and wide_scroll > wide_client  # wider than the page: it scrolls
            text_cell = page.locator("td.long").first.bounding_box()
            assert text_cell["height"] > 40 and text_cell["width"] < 28 * 16 + 30  # the long text wraps
        finally:
            chromium.close()


@browser
@pytest.mark.browser
def test_the_check_fails_on_a_table_that_runs_off_the_page(tmp_path):
    """Not vacuous: the same wide table with no scrolling box widens the page, and a headline
    figure hidden in a table box that scrolls (past its right edge) is caught."""
    rows = wide_rows()
    head = "".join(f"<th>{h}</th>" for h in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{v}</td>" for v in r.values()) + "</tr>" for r in rows)
    bare = tmp_path / "bare.html"
    bare.write_text(
        "<!DOCTYPE html><html><head><style>body { max-width: 1000px; margin: 2em auto; }"
        "td, th { border: 1px solid #ccc; padding: 4px 10px; white-space: nowrap; }</style></head>"
        f"<body><h1>no box</h1><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></body></html>"
    )
    with pytest.raises(AssertionError, match="scrolls sideways"):
        assert_readable_at_1280(bare, ["run-00"])

    report = Report("headline in the last column")
    report.summary().table([{**r, "ce_loss_recovered": 0.9953} for r in wide_rows(n_rows=8)])
    hidden = report.write(tmp_path / "hidden.html")
    with pytest.raises(AssertionError, match="0.9953"):
        assert_readable_at_1280(hidden, ["0.9953"])
    assert assert_readable_at_1280(hidden, ["run-00"]) == []  # the first column is in sight


def fake_run(folder, command, started, wall_time_s, summary):
    folder.mkdir(parents=True)
    (folder / "report.html").write_text("<!DOCTYPE html><html><body>report</body></html>")
    record = {"command": command, "started": started, "wall_time_s": wall_time_s, "summary": summary}
    (folder / "record.json").write_text(json.dumps({**record, "report": "report.html"}))


@browser
@pytest.mark.browser
def test_the_runs_index_is_readable_at_1280_and_still_sorts(tmp_path):
    from playwright.sync_api import sync_playwright

    from unweave.index import RunsConfig, run_runs

    deep = tmp_path / "a-rather-long-folder-name-for-the-experiments-of-this-week" / "sae-eval-on-wikitext"
    fake_run(
        deep / "run-b",
        "unweave sae eval",
        "2025-01-02T10:00:00+00:00",
        120.5,
        [f"dict-{i}: FVU 0.0{i}21, L0 31.2, dead 0.10%, CE loss recovered 0.99{i}3, KL 0.0123" for i in range(4)],
    )
    fake_run(deep / "run-a", "unweave scrub", "2025-01-01T10:00:00+00:00", 7.25, ["cancellation: 97.1% recovered"])
    result = run_runs(RunsConfig(dir=tmp_path))
    assert assert_readable_at_1280(result.report, ["7.25", "120.5", "sae eval", "scrub"]) == []
    with sync_playwright() as pw:
        chromium = launch(pw)
        try:
            page = chromium.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            page.goto(result.report.resolve().as_uri())
            assert page.locator(".table-wrap > table.sortable").count() == 1
            first_column = "table.sortable tbody tr td:first-child"
            assert page.locator(first_column).all_text_contents() == ["scrub", "sae eval"]  # oldest first
            page.click("table.sortable th:has-text('wall time')")
            assert page.locator(first_column).all_text_contents() == ["scrub", "sae eval"]  # 7.25 < 120.5
            page.click("table.sortable th:has-text('wall time')")
            assert page.locator(first_column).all_text_contents() == ["sae eval", "scrub"]
            assert page.locator("a[href$='report.html']").count() == 2
        finally:
            chromium.close()


@browser
@pytest.mark.browser
def test_llc_and_scrub_reports_are_readable_at_1280(tmp_path):
    """Two more real reports: the LLC's headline sentence and the scrub table's first figures
    on the first screen."""
    from unweave.hypotheses.command import ScrubConfig, run_scrub
    from unweave.slt.command import LLCConfig, run_llc
    from unweave.slt.sgld import SGLDConfig

    llc = run_llc(LLCConfig("rrr:3,2,3:1", out=tmp_path / "llc", settings="fixed", sgld=SGLDConfig(chains=2, draws=20)))
    assert assert_readable_at_1280(llc.report, [llc.summary[0]]) == []
    scrub = run_scrub(ScrubConfig("cancellation", out=tmp_path / "scrub", examples=256))
    first = scrub.data["hypotheses"][0]
    assert assert_readable_at_1280(scrub.report, [first["hypothesis"], f"{first['loss_recovered']:.4g}"]) == []
