import shutil

import plotly.graph_objects as go
import pytest

from unweave.demo import DemoConfig, run_demo
from unweave.report import Report
from unweave.zoo.modadd import ModAddConfig

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_report_is_self_contained_and_escaped(tmp_path):
    r = Report("a <title>")
    r.section("S & T").text("x < y").table([{"name": "a", "value": 0.123456}]).figure(go.Figure(go.Bar(y=[1, 2])))
    page = r.write(tmp_path / "r.html").read_text()
    assert "a &lt;title&gt;" in page and "S &amp; T" in page and "x &lt; y" in page
    assert '<td class="num">0.1235</td>' in page
    assert "<script src" not in page and "<link" not in page  # nothing fetched from a network
    assert page.count("Plotly.newPlot") == 1


CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
]


def launch(pw):
    """Headless Debian Chromium from a `sync_playwright()` context (tests/test_report_layout.py uses it too)."""
    return pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def render(path):
    """Open a file in headless Chromium; return (plot count, console errors, page errors)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = launch(pw)
        try:
            page = browser.new_page()
            errors, page_errors = [], []
            page.on("console", lambda m: errors.append(m.text) if m.type in ("error", "warning") else None)
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.goto(path.resolve().as_uri())
            page.wait_for_load_state("load")
            n_plots = page.locator(".js-plotly-plot:has(svg.main-svg)").count()  # drawn plots
            page.screenshot(path=str(path.with_suffix(".png")), full_page=True)
            return n_plots, errors, page_errors
        finally:
            browser.close()


browser = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium is absent: install Debian's chromium "
    "(apt-get install chromium) to render the report in tests",
)


@browser
@pytest.mark.browser
def test_browser_check_catches_a_broken_page(tmp_path):
    """The render check can fail: a page with a script error and no plot is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>console.error('boom'); notDefined();</script></body></html>")
    n_plots, errors, page_errors = render(bad)
    assert n_plots == 0 and errors == ["boom"] and "notDefined" in page_errors[0]


@browser
@pytest.mark.browser
def test_demo_report_renders_with_plots_and_no_errors(tmp_path):
    cfg = ModAddConfig(p=13, d_model=32, n_heads=2, d_mlp=64, steps=60, eval_every=10, checkpoint_every=20)
    result = run_demo(DemoConfig(out=tmp_path, modadd=cfg))
    n_plots, errors, page_errors = render(result.report)
    # training, spectrum, progress, LLC, MDL curve, bit split, effect graph, separability, unit check
    assert n_plots == 9
    assert errors == [] and page_errors == []
    assert result.report.with_suffix(".png").stat().st_size > 10_000


@browser
@pytest.mark.browser
def test_scrub_report_renders(tmp_path):
    from unweave.hypotheses.command import ScrubConfig, run_scrub

    result = run_scrub(ScrubConfig("cancellation", out=tmp_path, examples=256))
    n_plots, errors, page_errors = render(result.report)
    assert n_plots == 1 and errors == [] and page_errors == []


@browser
@pytest.mark.browser
def test_graph_page_draws_the_graph_and_shows_a_unit_on_hover(tmp_path):
    from playwright.sync_api import sync_playwright

    from unweave.graph.command import GraphConfig, run_graph

    result = run_graph(GraphConfig("two-tasks", out=tmp_path, examples=256))
    n_plots, errors, page_errors = render(result.report)
    assert n_plots == 3 and errors == [] and page_errors == []
    with sync_playwright() as pw:
        browser = launch(pw)
        try:
            page = browser.new_page()
            page.goto(result.report.resolve().as_uri())
            graph = page.locator(".js-plotly-plot").first
            # the page's own data: every unit is a node whose hover names it, its module and its top inputs
            texts = graph.evaluate("el => el.data.filter(t => t.mode === 'markers').flatMap(t => t.text)")
            assert len(texts) == 64 and all("module" in t and "top inputs" in t for t in texts)
            graph.scroll_into_view_if_needed()
            box = graph.locator("g.points path.point").first.bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)  # plotly's own hover
            page.wait_for_selector("g.hovertext", timeout=5000)
            assert "mlp.hook_post[" in page.locator("g.hovertext").first.text_content()
        finally:
            browser.close()


@browser
@pytest.mark.browser
def test_prompt_graph_page_draws_the_attribution_graph_with_hover(tiny_model_dir, tmp_path):
    """A prompt's page: the attribution graph is drawn (tokens, latents, errors, outputs as
    marker traces, edges as lines) and a latent's hover names it with its influence."""
    from playwright.sync_api import sync_playwright
    from test_graph_dictionary import PROMPT, _prompt_transcoder

    from unweave.graph.command import GraphConfig, run_graph

    first, _, _ = _prompt_transcoder(tiny_model_dir, tmp_path / "l0", layer=0)
    second, _, _ = _prompt_transcoder(tiny_model_dir, tmp_path / "l1", layer=1)
    cfg = GraphConfig(str(first), dictionary=[second], prompt=PROMPT, snippet_tokens=0, out=tmp_path / "g")
    result = run_graph(cfg)
    n_plots, errors, page_errors = render(result.report)
    assert errors == [] and page_errors == []
    with sync_playwright() as pw:
        browser = launch(pw)
        try:
            page = browser.new_page()
            page.goto(result.report.resolve().as_uri())
            graph = page.locator(".js-plotly-plot").last  # the attribution graph is the page's last figure
            names = graph.evaluate("el => el.data.filter(t => t.mode === 'markers').map(t => t.name)")
            assert {"token", "output"} <= set(names) and any(n.startswith("module 0: latent") for n in names)
            lines = graph.evaluate("el => el.data.filter(t => t.mode === 'lines').flatMap(t => t.x).length")
            assert lines > 0
            graph.scroll_into_view_if_needed()
            latents = next(k for k, n in enumerate(names) if n.endswith(": latent"))
            point = graph.locator("g.trace.scatter").nth(latents - len(names)).locator("path.point").first
            box = point.bounding_box()
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.wait_for_selector("g.hovertext", timeout=5000)
            hover = page.locator("g.hovertext").first.text_content()
            assert "latent" in hover and "module" in hover and "influence" in hover
        finally:
            browser.close()


@browser
@pytest.mark.browser
def test_induction_graph_page_renders_its_edges(tmp_path, monkeypatch, induction_model):
    from unweave.graph import induction
    from unweave.graph.command import GraphConfig, run_graph

    monkeypatch.setattr(induction, "train", lambda cfg: induction_model)  # seed 0's, trained once per session
    result = run_graph(GraphConfig("induction", out=tmp_path, examples=48))
    n_plots, errors, page_errors = render(result.report)
    assert n_plots == 4, "component graph, methods against exact, circuit curve, KL histogram"
    assert errors == [] and page_errors == []
    page = result.report.read_text()
    assert "L0.H0 -&gt; L1.H0.k" in page or "L0.H0 -> L1.H0.k" in page  # every edge named on hover


@browser
@pytest.mark.browser
def test_sortable_table_sorts_numbers_when_its_header_is_clicked(tmp_path):
    from playwright.sync_api import sync_playwright

    rows = [{"name": n, "value": v, "href": f"{n}.html"} for n, v in (("b", 10.0), ("a", 9.0), ("c", 100.0))]
    report = Report("t")
    report.section("s").table(rows, links={"name": "href"}, sortable=True)
    report.write(tmp_path / "t.html")
    with sync_playwright() as pw:
        browser = launch(pw)
        try:
            page = browser.new_page()
            page.goto((tmp_path / "t.html").resolve().as_uri())
            page.click("th:has-text('value')")
            assert page.locator("tbody tr td:first-child").all_text_contents() == ["a", "b", "c"]  # 9 < 10 < 100
            page.click("th:has-text('value')")
            assert page.locator("tbody tr td:first-child").all_text_contents() == ["c", "b", "a"]
            assert page.locator("a[href='b.html']").count() == 1 and page.locator("th").count() == 2
        finally:
            browser.close()
