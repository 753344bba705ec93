"""End to end: a small tracked study, then ``aam-search ui`` driven by a real browser.

Debian's chromium (headless, under Selenium with Debian's chromedriver, a fresh profile: a
new user) opens the MLflow UI where ``aam-search ui`` points, picks "Model training" as the
README says, goes to the experiments list and clicks the study's experiment. That must land
on the experiment's runs (the parent study run, its trial runs nested under it), not on the
GenAI overview; the test shows the ``pareto`` tag as a column of the runs table and checks
that every trial run is listed with the tag value the store holds; then each trial's run
page must show the tag too. Screenshots are left in the test's temp folder. Without
chromium, chromium-driver or selenium the test is skipped, except under CI (``.ci/run``
installs them), where it fails.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import urllib.error
import urllib.request

import psutil
import pytest

from aam_search.tracking.store import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, experiment_name, make_client
from tests.search.conftest import (  # noqa: F401  (reaper is a fixture)
    TINY_TRIAL,
    cli,
    kill_group,
    processes_under,
    reaper,
    spawn,
    wait_for,
)
from tests.tracking.browser import (
    accepts,
    chromium,
    free_port,
    listening_addresses,
    other_local_addresses,
    require_browser,
)
from tests.tracking.conftest import run_study, tiny_config, tracker_of

pytestmark = pytest.mark.slow

TRIALS = 2
WAIT_S = 60
UI_START_S = 180  # `mlflow ui` on a busy 2-core machine can take a minute or two to answer
MIN_PNG_BYTES = 10_000
MODEL_TRAINING = "Model training"  # the MLflow UI's sidebar switch (the other side is "GenAI")


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def process_group(pgid: int) -> list[psutil.Process]:
    """The live (non-zombie) processes of a process group."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


def stop(process: subprocess.Popen) -> None:
    """Stop the UI: SIGTERM to its process group (aam-search, mlflow ui, the uvicorn workers and
    MLflow's job consumers, which take a few seconds to shut down), SIGKILL to what is left."""
    members = process_group(process.pid)
    kill_group(process, signal.SIGTERM)
    _, alive = psutil.wait_procs(members, timeout=30)
    if alive:
        kill_group(process, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=10)
    process.wait(10)


def test_mlflow_ui_shows_trial_runs_and_pareto_tags(small_cache, tmp_path, reaper, monkeypatch):
    require_browser()  # before the study: no point running it without a browser
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    # 1. A small real study, tracked into the work folder's mlflow.db.
    config = tiny_config(small_cache.path, tmp_path / "work", trial=TINY_TRIAL, n_trials=TRIALS)
    orchestrator, outcome = run_study(config)
    assert outcome.completed == TRIALS, outcome
    tracker = tracker_of(orchestrator)
    client = make_client(tracker.uri)
    experiment = client.get_experiment_by_name(experiment_name(config.name))
    assert experiment is not None and experiment.tags.get(EXPERIMENT_KIND_TAG) == EXPERIMENT_KIND
    children = {run.info.run_name: run for run in tracker.child_runs()}
    assert sorted(children) == [f"trial-{n}" for n in range(TRIALS)]
    pareto = {name: run.data.tags.get("pareto") for name, run in children.items()}
    assert set(pareto.values()) <= {"true", "false"} and "true" in pareto.values(), pareto

    # 2. `aam-search ui` on a free port; it must listen on 127.0.0.1 only.
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "ui.log"
    ui = spawn(cli("ui", "--workdir", str(config.workdir), "--port", str(port)), log, tmp_path)
    reaper.append(ui)
    shots = {}
    try:
        wait_for(lambda: answers(f"{base}/"), UI_START_S, f"the MLflow UI at {base}/", interval=0.5, process=ui,
                 log=log)
        addresses = listening_addresses(port)
        if addresses is not None:  # None: this platform does not list listening sockets to us; nothing to check
            assert addresses == ["127.0.0.1"], f"the UI listens on {addresses}, not on 127.0.0.1 only"
        for host in other_local_addresses():
            assert not accepts(host, port), f"the UI answers on {host}:{port}; it must listen on 127.0.0.1 only"

        # 3. The browser: the experiment's runs table, with the pareto tag as a column.
        with chromium(tmp_path / "chromium-profile", tmp_path / "chromedriver.log") as driver:
            # The React UI re-renders while it loads: an element found a moment ago may be gone.
            wait = WebDriverWait(driver, WAIT_S, poll_frequency=0.25,
                                 ignored_exceptions=(StaleElementReferenceException,))

            def page_text() -> str:
                return driver.find_element(By.TAG_NAME, "body").text

            def until(condition, what: str, shot: str):
                try:
                    return wait.until(condition)
                except TimeoutException:
                    path = tmp_path / shot
                    driver.save_screenshot(str(path))
                    pytest.fail(f"timed out after {WAIT_S}s waiting for {what} at {driver.current_url} "
                                f"(screenshot {path}); the page shows:\n{page_text()[:3000]}")

            def click(xpath: str, what: str) -> None:
                """Click the first visible element matching ``xpath`` (the sidebar and the
                page can both hold a link of that name)."""
                def visible(_driver):
                    found = [e for e in driver.find_elements(By.XPATH, xpath) if e.is_displayed() and e.is_enabled()]
                    return found[0] if found else False

                until(visible, what, "mlflow-ui-failure.png").click()

            # As a new user: the address `aam-search ui` prints, then "Model training" in the
            # sidebar (MLflow 3.17 shows every experiment in the workflow picked there, GenAI
            # unless the browser remembers otherwise), the experiments list, the study's name.
            driver.get(f"{base}/")
            click(f"//*[@role='button'][normalize-space()='{MODEL_TRAINING}']", f"the {MODEL_TRAINING!r} switch")
            click("//a[normalize-space()='Experiments']", "the Experiments link")
            until(lambda _driver: re.search(r"#/experiments/?(\?|$)", driver.current_url), "the experiments list",
                  "mlflow-ui-failure.png")
            click(f"//a[normalize-space()='{experiment.name}']", f"the experiment {experiment.name} in the list")
            runs_url = re.compile(rf"#/experiments/{experiment.experiment_id}/runs\?"
                                  r"(.*&)?workflowType=machine_learning")
            until(lambda _driver: runs_url.search(driver.current_url),
                  f"the runs of experiment {experiment.name} (not its GenAI overview)", "mlflow-ui-failure.png")
            parent_cell = f"//*[@role='gridcell'][.//a[normalize-space()='study-{config.name}']]"
            until(EC.presence_of_element_located((By.XPATH, parent_cell)), "the study's parent run",
                  "mlflow-ui-failure.png")
            for button in driver.find_elements(By.CSS_SELECTOR,
                                               "button[data-component-id='mlflow.assistant.chat_panel.close']"):
                if button.is_displayed():  # the assistant side panel only hides the table
                    button.click()

            columns = "//button[@data-testid='column-selection-dropdown'][normalize-space()='Columns']"
            until(EC.element_to_be_clickable((By.XPATH, columns)), "the Columns button",
                  "mlflow-ui-failure.png").click()
            search = until(EC.element_to_be_clickable((By.CSS_SELECTOR, "input[placeholder='Search columns']")),
                           "the column chooser", "mlflow-ui-failure.png")
            search.send_keys("pareto")
            pareto_column = "//*[contains(@class, 'tree-title')][normalize-space()='pareto']"
            until(EC.element_to_be_clickable((By.XPATH, pareto_column)), "the pareto tag in the column chooser",
                  "mlflow-ui-failure.png").click()
            search.send_keys(Keys.ESCAPE)

            # Trial runs are nested under the study's run: expand it.
            until(EC.element_to_be_clickable((By.XPATH, f"{parent_cell}//button")), "the study run's expander",
                  "mlflow-ui-failure.png").click()

            def row_value(run_id: str) -> str | None:
                cells = driver.find_elements(
                    By.XPATH, f"//*[@role='row'][@row-id='{run_id}']//*[@role='gridcell']"
                              "[starts-with(@col-id, 'tags.')][contains(@col-id, 'pareto')]")
                return cells[0].text.strip() if cells else None

            def trial_rows(_driver) -> bool:
                names = {a.text.strip() for a in driver.find_elements(By.XPATH, "//*[@role='gridcell']//a")}
                shown = {n for n in names if n.startswith(("trial-", "study-"))}
                return shown == {f"study-{config.name}", *children} and all(
                    row_value(run.info.run_id) == pareto[name] for name, run in children.items())

            until(trial_rows, f"the study run study-{config.name} and, nested in it, the trial runs {sorted(children)} "
                             f"with pareto tags {pareto}", "mlflow-ui-runs.png")
            shots["runs"] = tmp_path / "mlflow-ui-runs.png"
            driver.save_screenshot(str(shots["runs"]))
            print(f"screenshot of the runs table: {shots['runs']}")

            # 4. Each trial's run page lists the tag and its value.
            for name, run in sorted(children.items()):
                driver.get(f"{base}/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}")
                tag = re.compile(rf"(?m)^pareto\s*:\s*{pareto[name]}\s*$|\bpareto: {pareto[name]}\b")
                parent = f"study-{config.name}"  # the "Parent run" link
                until(lambda _driver: name in (text := page_text()) and parent in text and tag.search(text),
                      f"the run page of {name} (parent run {parent}) with the tag pareto: {pareto[name]}",
                      f"mlflow-ui-{name}.png")
                shots[name] = tmp_path / f"mlflow-ui-{name}.png"
                driver.save_screenshot(str(shots[name]))
                print(f"screenshot of {name}'s run page: {shots[name]}")
    finally:
        stop(ui)

    for path in shots.values():
        assert path.is_file() and path.stat().st_size > MIN_PNG_BYTES, path
    # 5. Nothing left running: not the UI's process group, not chromium (it names tmp_path).
    wait_for(lambda: not process_group(ui.pid) and not processes_under(tmp_path), 15,
             f"the UI's process group and the browser's processes under {tmp_path} to end")
