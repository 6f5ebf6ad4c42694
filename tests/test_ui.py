"""The Prefect UI, in a real headless browser, shows a helixflow flow run.

One small pipeline runs on the session's Prefect server; the system Chromium (Debian
`chromium` + `chromium-driver`, driven by Selenium, nothing downloaded) then opens the run's
page and checks what a user would see: the run's name and state, its task runs, its
artifacts, and the rendered `qc-report` markdown. Screenshots (and, on failure, the page
source) are saved under tests/output/ui/ and their paths printed.

Expected texts come from the Prefect API, not from constants; selectors are visible text
plus a few structural attributes (`role="tablist"`, artifact links `/artifacts/artifact/<id>`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import REPO, missing, require_tool

pytestmark = [pytest.mark.integration, pytest.mark.browser]

OUT = REPO / "tests" / "output" / "ui"
WAIT = 60.0  # seconds; the first load of the UI (a Vue SPA) on a busy 2-core box is slow
ARTIFACT_LINKS = "a[href^='/artifacts/artifact/']"


@dataclass(frozen=True)
class Run:
    """A finished pipeline run and what the API says about it."""

    id: str
    name: str
    ui: str  # UI base, e.g. http://127.0.0.1:PORT
    url: str  # the run's page
    task_runs: list[dict[str, Any]]
    artifacts: list[dict[str, Any]]  # keyed artifacts only (result records have no key)


def _post(api: str, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    resp = httpx.post(f"{api}{path}", json=body, timeout=30)
    resp.raise_for_status()
    return list(resp.json())


@pytest.fixture(scope="module")
def run(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Phase 1 of the pipeline (k-mer embeddings, no simulation) on small demo data."""
    from helixflow.app.demo import DemoSpec, write_demo
    from helixflow.app.launch import launch_pipeline

    tmp = tmp_path_factory.mktemp("ui")
    demo = write_demo(tmp, DemoSpec(n_pairs=2000, n_genomes=3, genome_length=20_000))
    launched = launch_pipeline(
        [str(demo.r1), str(demo.r2)], embed_methods=["kmer"], simulate=False,
        store=str(tmp / "store"), shard_size=1000,
    )
    assert launched.error is None, launched.error
    run_id = str(launched.flow_run_id)
    resp = httpx.get(f"{prefect_api}/flow_runs/{run_id}", timeout=30)
    resp.raise_for_status()
    assert resp.json()["state"]["type"] == "COMPLETED"
    task_runs = _post(prefect_api, "/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
    artifacts = _post(prefect_api, "/artifacts/filter",
                      {"artifacts": {"flow_run_id": {"any_": [run_id]}}})
    assert task_runs
    return Run(
        id=run_id, name=resp.json()["name"], ui=launched.ui_url.split("/runs/flow-run/")[0],
        url=launched.ui_url, task_runs=task_runs,
        artifacts=[a for a in artifacts if a.get("key")],
    )


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    """Headless system Chromium through the system chromedriver; Selenium Manager stays off."""
    chromium = require_tool("chromium")
    chromedriver = require_tool("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing("selenium (pip install -e '.[test]')")

    options = Options()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1600,1200"):
        options.add_argument(arg)
    # explicit browser and driver paths skip Selenium Manager; SE_OFFLINE keeps it offline anyway
    saved = os.environ.get("SE_OFFLINE")
    os.environ["SE_OFFLINE"] = "true"
    try:
        drv = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
        try:
            drv.set_page_load_timeout(WAIT)
            yield drv
        finally:
            drv.quit()
    finally:
        if saved is None:
            os.environ.pop("SE_OFFLINE", None)
        else:
            os.environ["SE_OFFLINE"] = saved


def _text(drv: Any) -> str:
    """The page's rendered (visible) text."""
    return str(drv.execute_script("return document.body ? document.body.innerText : ''"))


def _lines(drv: Any) -> set[str]:
    return {line.strip() for line in _text(drv).splitlines() if line.strip()}


def _wait(drv: Any, until: Callable[[Any], Any], what: str) -> Any:
    """Wait up to WAIT seconds for `until(drv)` to be truthy."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(drv, WAIT, poll_frequency=0.5,
                         ignored_exceptions=(NoSuchElementException,
                                             StaleElementReferenceException))
    return wait.until(until, message=f"UI did not show {what} within {WAIT:.0f} s")


def _wait_lines(drv: Any, lines: list[str], what: str) -> None:
    """Wait until each of `lines` is a whole line of the page's visible text."""
    _wait(drv, lambda d: set(lines) <= _lines(d), f"{what}: {lines}")


def _shot(drv: Any, name: str) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.png"
    drv.save_screenshot(str(path))
    print(f"\nscreenshot: {path}")
    return path


@contextmanager
def _capture(drv: Any, name: str) -> Iterator[None]:
    """On failure, save the screenshot and page source as <name>-failed.* and re-raise."""
    try:
        yield
    except BaseException:
        OUT.mkdir(parents=True, exist_ok=True)
        html = OUT / f"{name}-failed.html"
        html.write_text(drv.page_source, encoding="utf-8")
        _shot(drv, f"{name}-failed")
        print(f"page source: {html}  (url {drv.current_url})")
        raise


def _open_tab(drv: Any, run: Run, tab: str) -> None:
    """Open the run's page and select one of its tabs by its label."""
    from selenium.webdriver.common.by import By

    drv.get(run.url)
    _wait_lines(drv, [run.name, "Completed"], "the flow run header")
    xpath = f"//*[@role='tablist']/*[normalize-space()='{tab}']"
    _wait(drv, lambda d: d.find_element(By.XPATH, xpath), f"the {tab!r} tab").click()


def _artifact_cards(drv: Any) -> dict[str, tuple[str, str]]:
    """Artifact cards on the page: key -> (type label, link). One script call, no per-element
    round trips (WebElement.text is slow on this DOM)."""
    links = drv.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]),"
        " a => [a.href, a.innerText]);", ARTIFACT_LINKS)
    cards = {}
    for href, text in links or []:
        lines = [line.strip() for line in str(text).splitlines() if line.strip()]
        if len(lines) >= 2:  # TYPE, key, created..., description
            cards[lines[1]] = (lines[0].lower(), str(href))
    return cards


def test_run_page_shows_flow_run(driver: Any, run: Run) -> None:
    with _capture(driver, "run-page"):
        driver.get(run.url)
        # header: breadcrumb "Runs / <name>", the state badge, the task run count
        _wait_lines(driver, [run.name, "Completed", f"{len(run.task_runs)} Task runs"],
                    "the flow run's name, state and task run count")
        _shot(driver, "run-page")


def test_task_runs_tab_lists_task_runs(driver: Any, run: Run) -> None:
    # newest first is the tab's default order: the newest few are on its first page
    newest = sorted(run.task_runs, key=lambda t: t.get("start_time") or "", reverse=True)
    names = list(dict.fromkeys(t["name"] for t in newest))[:5]
    assert "qc-report" in {t["name"] for t in run.task_runs}
    with _capture(driver, "task-runs"):
        _open_tab(driver, run, "Task Runs")
        # the count line exists only on this tab (the Logs tab, which also names task runs,
        # is unmounted by then): wait for it before looking for names
        n = len(run.task_runs)
        _wait_lines(driver, [f"{n} Task runs", f"({n} Completed)"], "the task run count")
        _wait_lines(driver, names, "task run names")
        _shot(driver, "task-runs")


def test_artifacts_tab_lists_artifacts(driver: Any, run: Run) -> None:
    from selenium.webdriver.common.by import By

    expected = {a["key"]: (a["type"], f"{run.ui}/artifacts/artifact/{a['id']}")
                for a in run.artifacts}
    assert {"qc-report", "lineage", "ingest-stats"} <= set(expected)
    with _capture(driver, "artifacts"):
        _open_tab(driver, run, "Artifacts")
        flow_level = {a["key"] for a in run.artifacts if not a.get("task_run_id")}
        _wait(driver, lambda d: flow_level <= set(_artifact_cards(d)),
              f"the flow run's artifacts {sorted(flow_level)}")
        tablist = driver.find_element(By.XPATH, "//*[@role='tablist']")
        driver.execute_script("arguments[0].scrollIntoView()", tablist)
        _shot(driver, "artifacts")

        # task runs' artifacts sit below, in a virtual scroller that renders when scrolled to
        def all_cards(d: Any) -> bool:
            d.execute_script(
                "const a = document.querySelectorAll(arguments[0]);"
                " if (a.length) a[a.length - 1].scrollIntoView();"
                " const panel = document.querySelector('[role=tabpanel]');"
                " if (panel) panel.scrollIntoView(false);", ARTIFACT_LINKS)
            return set(expected) <= set(_artifact_cards(d))

        _wait(driver, all_cards, f"all artifacts {sorted(expected)}")
        cards = _artifact_cards(driver)
        for key, want in expected.items():
            assert cards[key] == want, (key, cards[key], want)
        _shot(driver, "artifacts-task-runs")


def test_qc_report_artifact_renders_markdown(driver: Any, run: Run) -> None:
    from selenium.webdriver.common.by import By

    (report,) = [a for a in run.artifacts if a["key"] == "qc-report"]
    assert report["type"] == "markdown"
    with _capture(driver, "qc-report"):
        driver.get(f"{run.ui}/artifacts/artifact/{report['id']}")
        heading = _wait(
            driver, lambda d: d.find_element(By.XPATH, "//h1[contains(., 'QC report')]"),
            "the qc-report's rendered heading")
        assert run.id in heading.text
        # markdown rendered, not shown as source: tables are <table>, no '# ' or '|---' text
        _wait(driver, lambda d: d.find_elements(By.TAG_NAME, "table"), "the report's tables")
        text = _text(driver)
        assert "# QC report" not in text and "|---" not in text.replace(" ", "")
        _shot(driver, "qc-report")


def test_lineage_artifact_shows_a_picture(driver: Any, run: Run) -> None:
    """The run's lineage renders as an image (Graphviz PNG), its mermaid source below."""
    from selenium.webdriver.common.by import By

    (lineage,) = [a for a in run.artifacts if a["key"] == "lineage"]
    with _capture(driver, "lineage"):
        driver.get(f"{run.ui}/artifacts/artifact/{lineage['id']}")

        def drawn(d: Any) -> Any:
            imgs = [i for i in d.find_elements(By.TAG_NAME, "img")
                    if (i.get_attribute("src") or "").startswith("data:image/png")
                    and "lineage" in (i.get_attribute("alt") or "")]
            # loaded and laid out: a real picture, not a broken-image icon
            return [i for i in imgs if d.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth", i) > 100
                    and i.is_displayed()]

        (img,) = _wait(driver, drawn, "the lineage picture")
        assert img.size["width"] > 100 and img.size["height"] > 20
        assert "flowchart LR" in _text(driver)  # the mermaid source is kept below it
        _shot(driver, "lineage")
