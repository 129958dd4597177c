"""The documentation site in a real browser: headless Chromium opens the index, a gallery page
and an API page; every image on them has loaded, every internal link of the site resolves, and
the gallery has a page for every ``demos/demo_*.py``.

``make test-docs`` (part of ``make test``) builds the site with ``make docs`` and passes it in
``ATTNFLOW_DOCS_HTML``; without it this file builds the site itself into a temporary directory
(``sphinx-build -W --keep-going``, all demos with ``--small``: a few minutes). The tools are
the ``docs`` extra and Debian's ``chromium`` + ``chromium-driver``; when they are missing the
tests skip, unless ``ATTNFLOW_REQUIRE_DOCS=1`` (set by ``.ci/run``), where they fail.
Screenshots go to the test's ``tmp_path`` (their paths are printed).
"""

from __future__ import annotations

import functools
import html.parser
import http.server
import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest
from mpi4py import MPI

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MODULES = ("sphinx", "myst_parser", "pydata_sphinx_theme", "jupytext", "selenium")
BROWSER = ("chromium", "chromedriver")

pytestmark = pytest.mark.skipif(
    MPI.COMM_WORLD.size > 1, reason="builds the site and drives a browser: serial only"
)


def _missing() -> list[str]:
    missing = [m for m in MODULES if importlib.util.find_spec(m) is None]
    return missing + [b for b in BROWSER if shutil.which(b) is None]


@pytest.fixture(scope="module")
def tools() -> None:
    missing = _missing()
    if missing:
        msg = (
            f"documentation tools missing: {', '.join(missing)} (pip install -e '.[docs]'; "
            "apt-get install chromium chromium-driver)"
        )
        if os.environ.get("ATTNFLOW_REQUIRE_DOCS") == "1":
            pytest.fail(msg + "; ATTNFLOW_REQUIRE_DOCS=1 requires them")
        pytest.skip(msg)


@pytest.fixture(scope="module")
def site(tools, tmp_path_factory) -> Path:
    """The built site: ``ATTNFLOW_DOCS_HTML`` or a fresh build into a temporary directory."""
    given = os.environ.get("ATTNFLOW_DOCS_HTML")
    if given:
        html = Path(given)
        assert (html / "index.html").is_file(), f"ATTNFLOW_DOCS_HTML={given} holds no index.html"
        return html
    out = tmp_path_factory.mktemp("site") / "html"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI_", "HYDRA_", "MPIR_"))}
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", DOCS, out]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return out


# -- the site as files: links and the gallery ---------------------------------------------------
class _Links(html.parser.HTMLParser):
    """The ids of a page and its links (href of a/link, src of img/script)."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        if a.get("id"):
            self.ids.add(a["id"])
        if tag == "a" and a.get("name"):
            self.ids.add(a["name"])
        key = {"a": "href", "link": "href", "img": "src", "script": "src"}.get(tag)
        if key and a.get(key):
            self.links.append(a[key])


@functools.cache
def _parse(path: Path) -> _Links:
    p = _Links()
    p.feed(path.read_text(errors="replace"))
    return p


def _internal(link: str) -> bool:
    scheme = urllib.parse.urlsplit(link).scheme
    return scheme in ("", "file") and not link.startswith(("//", "javascript:", "data:"))


def _broken_links(page: Path, root: Path) -> list[str]:
    broken = []
    for link in _parse(page).links:
        if not _internal(link):
            continue
        parts = urllib.parse.urlsplit(link)
        target = (
            page if not parts.path else (page.parent / urllib.parse.unquote(parts.path)).resolve()
        )
        if target.is_dir():
            target = target / "index.html"
        if not target.is_file() or not target.resolve().is_relative_to(root.resolve()):
            broken.append(f"{link} (no file)")
        elif parts.fragment and target.suffix == ".html":
            if urllib.parse.unquote(parts.fragment) not in _parse(target).ids:
                broken.append(f"{link} (no id #{parts.fragment})")
    return broken


def test_every_internal_link_of_the_site_resolves(site):
    pages = sorted(p for p in site.rglob("*.html") if "_static" not in p.relative_to(site).parts)
    assert len(pages) > 20
    broken = {str(p.relative_to(site)): b for p in pages if (b := _broken_links(p, site))}
    assert not broken, broken


def test_the_gallery_has_a_page_for_every_demo(site):
    demos = sorted(p.stem for p in (ROOT / "demos").glob("demo_*.py"))
    pages = sorted(p.stem for p in (site / "demos").glob("demo_*.html"))
    assert pages == demos
    index = _parse(site / "demos" / "index.html").links
    for name in demos:
        assert f"{name}.html" in index, f"the gallery index does not link {name}"
        imgs = [x for x in _parse(site / "demos" / f"{name}.html").links if "_images/" in x]
        assert imgs, f"the gallery page of {name} shows no figure"


def test_the_api_reference_documents_the_namespaces(site):
    for name in (
        "attnflow",
        "attnflow.fem",
        "attnflow.kernels",
        "attnflow.particles",
        "attnflow.layers",
        "attnflow.studies",
        "attnflow.causal",
        "attnflow.metrics",
    ):
        page = site / "api" / f"{name}.html"
        assert page.is_file(), f"no API page for {name}"
    # Signatures generated from the docstrings: the solver's class and a function.
    fem = _parse(site / "api" / "attnflow.fem.html").ids
    assert "attnflow.fem.MeanFieldSolver" in fem
    assert "attnflow.particles.simulate" in _parse(site / "api" / "attnflow.particles.html").ids


# -- in Chromium --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(site):
    """The site over HTTP on 127.0.0.1 (as a reader would get it), for the module's tests."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        # The browser drops connections it no longer needs (navigation): not an error here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@pytest.fixture(scope="module")
def browser(tools):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1600",
        # Hermetic: nothing but the local server (MathJax's CDN fails at once, offline).
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    ):
        options.add_argument(arg)
    options.page_load_strategy = "eager"
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


IMAGES = """return Array.from(document.images).map(
    i => [i.currentSrc || i.src, i.complete, i.naturalWidth, i.naturalHeight]);"""
LINKS = "return Array.from(document.links).map(a => a.href);"


def _pages(site: Path) -> dict[str, str]:
    gallery = "demos/demo_circle_clustering.html"
    if not (site / gallery).is_file():
        gallery = f"demos/{sorted((site / 'demos').glob('demo_*.html'))[0].name}"
    return {"index": "index.html", "gallery": gallery, "api": "api/attnflow.fem.html"}


@pytest.mark.parametrize("which", ["index", "gallery", "api"])
def test_page_loads_in_chromium_with_its_images(which, site, server, browser, tmp_path):
    from selenium.webdriver.support.ui import WebDriverWait

    path = _pages(site)[which]
    browser.get(f"{server}/{path}")
    WebDriverWait(browser, 60).until(
        lambda d: d.execute_script(
            "return document.readyState === 'complete' && "
            "Array.from(document.images).every(i => i.complete);"
        )
    )
    assert "attnflow" in browser.title
    assert browser.find_element("tag name", "h1").text.strip()
    images = browser.execute_script(IMAGES)
    if which in ("index", "gallery"):
        assert images, f"{path}: no images"
    unloaded = [src for src, complete, w, h in images if not (complete and w > 0 and h > 0)]
    assert not unloaded, f"{path}: images not loaded: {unloaded}"
    # Every link the browser sees on the page that points into the site is served.
    import urllib.request

    for href in sorted(set(browser.execute_script(LINKS))):
        if href.startswith(server):
            url = href.split("#")[0]
            with urllib.request.urlopen(url, timeout=30) as r:
                assert r.status == 200, href
    shot = tmp_path / f"{which}.png"
    assert browser.save_screenshot(str(shot))
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[0] > 100 and pixels.std() > 0.01, f"{shot}: blank screenshot"
    print(f"screenshot of {path}: {shot}")


# -- the docstring converter of the site (docs/_ext/attnflow_docs.py) --------------------------
HOUSE_STYLE = """Self-attention dynamics of tokens in ``R^d`` or on ``S^{d-1}``.

Parameters
----------
d : ambient dimension (``>= 2`` on the sphere).
Q, K, V : ``(d, d)`` query, key and value matrices, with a long description that
    continues on an indented line.
**kwargs : passed on.

The instance is immutable; prose after the entries
continues the section.

Returns
-------
KernelSums ``(shift, den, num)`` with ``num`` (n_t, d) (or
(n_t, 0)), such that ``den_i = sum_j w_j`` and ``num_i =
sum_j w_j y_j``.

w1 : (R, n_saved) distances.
l1 : (R, n_saved) L1 distance of the cell masses
    (NaN when no histogram is given).
A paragraph
    with an indented line, then back.

Examples
--------
::

    x = 1
        y = 2
"""


def test_house_style_docstrings_become_valid_restructuredtext():
    if importlib.util.find_spec("sphinx") is None or importlib.util.find_spec("docutils") is None:
        pytest.skip("sphinx missing (pip install -e '.[docs]')")
    import docutils.core
    import docutils.utils

    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        from attnflow_docs import numpy_sections_to_rst
    finally:
        sys.path.remove(str(DOCS / "_ext"))
    lines = HOUSE_STYLE.splitlines()
    rst = "\n".join(numpy_sections_to_rst(lines))
    # As published by docutils (the rubric directive is Sphinx's: a plain title here).
    plain = rst.replace(".. rubric:: ", "")
    doc = docutils.core.publish_doctree(
        plain, settings_overrides={"report_level": 5, "halt_level": 5}
    )
    problems = [m.astext() for m in doc.findall(docutils.nodes.system_message)]
    assert not problems, "\n".join(problems) + "\n\n" + rst
    # Entries are items of definition lists, the names as literals; prose and literal blocks
    # survive.
    items = list(doc.findall(docutils.nodes.definition_list_item))
    names = [i.children[0].astext() for i in items]
    assert names == ["d", "Q, K, V", "**kwargs", "w1", "l1"]
    assert all(isinstance(i.children[0].children[0], docutils.nodes.literal) for i in items)
    assert items[1].children[1].astext().endswith("continues on an indented line.")
    assert "prose after the entries" in doc.astext()
    (block,) = list(doc.findall(docutils.nodes.literal_block))
    assert block.astext() == "x = 1\n    y = 2"
    # Without the conversion the same docstring is not valid reStructuredText.
    raw = docutils.core.publish_doctree(
        HOUSE_STYLE, settings_overrides={"report_level": 5, "halt_level": 5}
    )
    assert list(raw.findall(docutils.nodes.system_message))
