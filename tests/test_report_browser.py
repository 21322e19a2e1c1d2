"""The HTML report rendered by a real browser (headless Chromium): tables and every embedded plot are
present and decode, and the page asks for nothing over the network.

Skipped only when no Chromium binary exists (Debian: `apt-get install -y chromium`; `.ci/run` installs it and
sets PGOLF_REQUIRE_BROWSER=1, which turns a missing browser into an error); the end of the pytest output
then says loudly that the browser test did not run.
"""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import report_store as S

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    env = os.environ.get("PGOLF_CHROMIUM")
    if env and os.path.exists(env):
        return env
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


CHROMIUM = find_chromium()
NOT_RUN = "no Chromium binary on PATH (apt-get install -y chromium)"
if CHROMIUM is None and os.environ.get("PGOLF_REQUIRE_BROWSER") == "1":
    raise RuntimeError(f"PGOLF_REQUIRE_BROWSER=1 but {NOT_RUN}")
# A skip here is reported by tests/conftest.py at the end of the run as NOT RUN, never silently.
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=NOT_RUN)

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio")

# Appended to a copy of the report only: the report itself carries no script. It records, after load,
# how many images decoded to real pixels, so --dump-dom can show it.
PROBE = """<script>
addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 300 && i.naturalHeight > 200).length;
  const p = document.createElement('p'); p.id = 'probe';
  p.textContent = `images ${imgs.length} decoded ${ok} tables ${document.querySelectorAll('table').length}`;
  document.body.appendChild(p);
});
</script>"""


def chromium(args, profile, timeout=90):
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def report_html(tmp_path_factory):
    from pgolf.dashboards import report as R

    where = tmp_path_factory.mktemp("browser_store")
    uri, exp, pid = S.store_with_parent(where / "s", "browser", kind="sweep")
    for h, lr, base in (("aaaaaaaaaaaa", 0.02, 1.2230), ("bbbbbbbbbbbb", 0.04, 1.2200)):
        for seed in (1, 2, 3):
            S.trial(uri, exp, pid, variant=f"lr={lr}", seed=seed, config_hash=h, params={"optim.matrix_lr": lr},
                    result=S.synthetic_result(seed=seed, config_hash=h, bpb=base + 0.0004 * seed))
    S.trial(uri, exp, pid, variant="lr=0.08", seed=1, config_hash="cccccccccccc", status="FAILED",
            reason="trainer crashed <script>alert(1)</script>", params={"optim.matrix_lr": 0.08})
    rep = R.build_report(uri, "browser", baseline="aaaaaaaaaaaa")
    path = R.write_report(rep, str(where / "out"))
    return path, rep


def test_html_is_self_contained(report_html):
    path, rep = report_html
    html = open(path, encoding="utf-8").read()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", html, re.I)
    assert "<script" not in html.lower().replace("&lt;script&gt;", "")  # the hostile reason is escaped
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("data:image/png;base64,") == len(rep.plots) == 5


def test_chromium_renders_tables_and_decodes_every_image(report_html, tmp_path):
    path, rep = report_html
    probe = tmp_path / "probe.html"
    probe.write_text(open(path, encoding="utf-8").read().replace("</body>", PROBE + "</body>"), encoding="utf-8")
    out = chromium(["--virtual-time-budget=10000", "--dump-dom", probe.as_uri()], tmp_path / "profile")
    assert out.returncode == 0, out.stderr[-2000:]
    dom = out.stdout
    m = re.search(r'id="probe">images (\d+) decoded (\d+) tables (\d+)<', dom)
    assert m, dom[-3000:]
    images, decoded, tables = map(int, m.groups())
    assert images == decoded == len(rep.plots) == 5
    assert tables == 4  # scores, budgets, all runs, invocations
    for text in ("Scores per variant", "Budgets and compliance", "All trial runs", "lr=0.08", "FAILED",
                 "paired t (one-sided)", "(baseline)", "16,000,000"):
        assert text in dom, text
    # Three variants in the score table, the failed one included.
    scores = dom[dom.index('id="scores"'):dom.index('id="budgets"')]
    assert scores.count("<tr") == 1 + 3


def test_chromium_screenshot_is_not_blank(report_html, tmp_path):
    path, _ = report_html
    shot = tmp_path / "shot.png"
    out = chromium([f"--screenshot={shot}", "--window-size=1280,1800", "--virtual-time-budget=10000",
                    "file://" + os.path.abspath(path)], tmp_path / "profile")
    assert out.returncode == 0 and shot.exists(), out.stderr[-2000:]
    from matplotlib.image import imread

    img = imread(str(shot))
    assert img.shape[:2] == (1800, 1280)
    assert np.std(img[..., :3]) > 0.05
