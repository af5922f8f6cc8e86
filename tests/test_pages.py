"""The pages a researcher opens (issue 18): search with filters and paging, a model's vectors, the flow graph,
the alignment heat map, and the API reference offline; in-process for the HTML, and in real headless Chromium
(with screenshots written next to the test's tmp folder, to be looked at) for what a browser makes of them."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.app import create_app
from service.cli import main
from service.heatmap import heatmap_png
from service.settings import Settings
from tests.service_fixtures import free_port, wait_until_serving
from tests.test_service import Client
from tests.tinymodels import save_gpt2

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.I)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny GPT-2s (one with head maps), a trace and an alignment."""
    root = tmp_path_factory.mktemp("pages")
    db = str(root / "lens.duckdb")
    a = save_gpt2(root / "a", seed=0, n_layer=4, plant_heads=True)
    b = save_gpt2(root / "b", seed=1, n_layer=4)
    assert main(["index", str(a.path), "--name", "gpt2", "--db", db, "--quiet", "--head-maps"]) == 0
    assert main(["index", str(b.path), "--name", "gpt2b", "--db", db, "--quiet"]) == 0
    assert main(["trace", "gpt2", " king paris london dog", "--db", db]) == 0
    assert main(["align", "gpt2", "gpt2b", "--db", db]) == 0
    return Path(db)


@pytest.fixture(scope="module")
def client(store: Path, tmp_path_factory: pytest.TempPathFactory):
    db = tmp_path_factory.mktemp("served") / "lens.duckdb"
    shutil.copy(store, db)
    app = create_app(Settings(db=db, page_limit=50))
    yield Client(app)
    app.state.owner.close()


def test_docs_and_redoc_load_nothing_from_elsewhere(client: Client) -> None:
    for path in ("/docs", "/redoc"):
        r = client.get(path)
        assert r.status_code == 200
        assert not EXTERNAL.search(r.text), EXTERNAL.search(r.text)
        for asset in re.findall(r"""(?:src|href)=["']?(/assets/docs/[^"' >]+)""", r.text):
            got = client.get(asset)
            assert got.status_code == 200 and len(got.content) > 1000, asset


def test_search_page_filters_pages_and_names_what_is_missing(client: Client) -> None:
    page = client.get("/search", params={"token": "paris", "model": "gpt2", "role": "all", "limit": 5}).text
    for name in ("model", "component", "role", "layer", "limit"):
        assert f"name={name}" in page
    assert "<option value='gpt2' selected>" in page and "<option value='all' selected>" in page
    nxt = re.search(r"href='(/search\?[^']*offset=5[^']*)'>next", page)
    assert nxt, "a next-page link"
    second = client.get(nxt.group(1).replace("&amp;", "&")).text
    assert "rows 6–10" in second and "← previous</a>" in second
    typo = client.get("/search", params={"token": "paris", "component": "ff_values"}).text
    assert "no component &#x27;ff_values&#x27;" in typo and "ff_value" in typo


def test_search_page_shows_a_pairs_source_and_a_readable_score(client: Client) -> None:
    page = client.get("/search", params={"token": "queen", "component": "attn_ov_pair"}).text
    assert "source → target" in page
    assert re.search(r"<span class=tok> ?king</span> → <span class=tok> ?queen</span>", page)
    assert ">0.000<" not in page  # scores of pairs are small: shown with their significant digits


def test_bars_span_the_shown_range(client: Client) -> None:
    page = client.get("/search", params={"token": "paris", "limit": 10}).text
    widths = [int(w) for w in re.findall(r"class='bar'[^>]*width:(\d+)px", page)]
    assert max(widths) == 100 and min(widths) == 12


def test_model_page_lists_vectors_by_norm_or_index_with_paging(client: Client) -> None:
    by_norm = client.get("/model/gpt2", params={"component": "ff_value", "limit": 10}).text
    norms = [float(x) for x in re.findall(r"<td class=n>([0-9.e+-]+)</td><td><span class='bar", by_norm)]
    assert len(norms) == 10 and norms == sorted(norms, reverse=True)
    assert "vectors 1–10 of 512" in by_norm and "offset=10" in by_norm
    by_index = client.get("/model/gpt2", params={"component": "ff_value", "order": "index", "limit": 3}).text
    assert [int(i) for i in re.findall(r"ff_value L0 #(\d+)</a>", by_index)] == [0, 1, 2]
    assert "layer 9 is out of range" in client.get("/model/gpt2", params={"layer": 9}).text


def test_flow_graph_is_sized_to_its_content_and_links_to_vectors(client: Client) -> None:
    page = client.get("/trace/1").text
    width = int(re.search(r"<svg [^>]*width='(\d+)'[^>]*aria-label='flow graph", page).group(1))
    assert width > 1280  # four blocks side by side; the page scrolls it
    assert "href='/vector/gpt2/ff_value/" in page and "href='/vector/gpt2/attn_o/" in page
    for path in set(re.findall(r"href='(/vector/gpt2/[^']+)'", page)):
        assert client.get(path.replace("&amp;", "&")).status_code == 200, path


def test_alignment_heat_map_has_axes_values_and_a_scale(client: Client, store: Path, tmp_path: Path) -> None:
    page = client.get("/alignment/1").text
    assert "gpt2b layer →" in page and "gpt2 layer →" in page and "linearGradient" in page
    assert int(re.search(r"<rect x=\"\d+\" y=\"\d+\" width=\"(\d+)\"", page).group(1)) >= 40  # cells to read
    png = heatmap_png([[0.1, 0.5], [0.3, 0.2]], {(0, 1)})
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width >= 2 * 48 + 44 + 24 and height >= 2 * 48 + 40  # cells, labels and the colour scale
    out = tmp_path / "align.png"
    assert main(["align", "gpt2", "gpt2b", "--db", str(store), "--png", str(out)]) == 0
    assert int.from_bytes(out.read_bytes()[16:20], "big") > 4 * 48


# ---- a real browser ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(store: Path, tmp_path_factory: pytest.TempPathFactory):
    db = tmp_path_factory.mktemp("browser") / "lens.duckdb"
    shutil.copy(store, db)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--db", str(db), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://localhost:{port}"
    wait_until_serving(proc, url)
    yield url
    proc.terminate()
    proc.communicate(timeout=30)


def _chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    assert CHROMIUM
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


PAGES = {"search": "/search?token=paris&role=all&limit=10", "pairs": "/search?token=queen&component=attn_ov_pair",
         "model": "/model/gpt2?component=ff_value", "trace": "/trace/1", "alignment": "/alignment/1",
         "docs": "/docs", "redoc": "/redoc"}


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not found: apt-get install -y chromium (make test does)")
def test_every_page_renders_in_chromium(server: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    shots = tmp_path_factory.mktemp("screenshots")  # kept with pytest's tmp folders, to be looked at
    blank = shots / "blank.png"
    _chromium(["--window-size=1300,1000", f"--screenshot={blank}", "about:blank"], shots / "profile")
    for name, path in PAGES.items():
        png = shots / f"{name}.png"
        _chromium(["--window-size=1300,1000", f"--screenshot={png}", server + path], shots / "profile")
        assert png.stat().st_size > 4 * blank.stat().st_size, f"{name} looks blank: {png}"
    docs = _chromium(["--dump-dom", server + "/docs"], shots / "profile").stdout
    assert "opblock" in docs and "/promoters" in docs  # Swagger UI ran, from local files, and read the schema
    redoc = _chromium(["--dump-dom", server + "/redoc"], shots / "profile").stdout
    assert "/models/{name}/vectors" in redoc
    trace = _chromium(["--dump-dom", server + "/trace/1"], shots / "profile").stdout
    assert 'class="go" href="/vector/gpt2/' in trace
    print(f"screenshots in {shots}")
