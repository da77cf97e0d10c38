"""End to end through the Dagster UI: `dagster-webserver` and `dagster-daemon` over a copy of the demo world,
driven in Debian's headless chromium. One cell of ``datamaker_job`` is launched from the job's Launchpad, queued,
dequeued by the daemon's run coordinator and run; its chips, nodata index and labels land in the bucket."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

from imagesim_pipeline.settings import PROJECT_ROOT
from imagesim_pipeline.storage import open_bucket
from imagesim_pipeline.storage.layout import (
    chip_cell_prefix,
    chip_manifest_key,
    chip_staging_prefix,
    labels_key,
    nodata_index_key,
    osm_key,
)
from imagesim_pipeline_tests.conftest import (
    CHROMIUM_ARGS,
    chromium,
    free_port,
    stop_process_group,
    wait_for_port,
    world_site,
)

BIN = Path(sys.executable).parent
JOB = "datamaker_job"
LOCATION = "imagesim_pipeline"  # workspace.yaml's location_name
CELL = "Z35-013133103003"  # the Helsinki cell of the demo world: its datamaker run is the quickest (~20 s)
RUN_TIMEOUT_S = 420


@pytest.fixture
def ui_site(world, tmp_path):
    """(bucket, env, home, cells): a copy of the demo world, a fresh instance with its cells registered
    (`imagesim discover`), and the environment of the Dagster processes run over it."""
    bucket, env = world_site(world[0], tmp_path)
    env["IMAGESIM_DEPLOYMENT"] = "local"  # steps run in local processes, whatever the caller's shell says
    home = Path(env["DAGSTER_HOME"])
    # Dagster's "Join the Dagster community" dialog opens over the first page served from 127.0.0.1 by an
    # instance that never answered it; it steals clicks (a dropdown closes under it). This is the file its
    # "Skip" button writes (dagster._core.nux).
    (home / ".nux").mkdir()
    (home / ".nux" / "nux.yaml").write_text("seen: 1\n")
    subprocess.run([BIN / "imagesim", "discover"], env=env, cwd=PROJECT_ROOT, check=True, capture_output=True)
    instance = DagsterInstance.from_config(str(home))
    cells = sorted(instance.get_dynamic_partitions("ard_cells"))
    instance.dispose()
    return bucket, env, home, cells


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:  # the child keeps its own descriptor
        return subprocess.Popen([str(BIN / args[0]), *args[1:]], cwd=PROJECT_ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def _processes_of(pgids: set[int], home: Path) -> dict[int, str]:
    """pid -> command line of every live process in one of ``pgids`` or whose environment names ``home``
    as its DAGSTER_HOME (a code server or run worker that left the group)."""
    marker = f"DAGSTER_HOME={home}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            ours = os.getpgid(pid) in pgids or marker in (entry / "environ").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if ours and state != "Z":
                found[pid] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ProcessLookupError):
            continue
    return found


def _stop_all(procs: list[subprocess.Popen], home: Path) -> dict[int, str]:
    """Stop the daemon and the webserver by their process groups; what was still alive 20 s later (killed)."""
    for proc in procs:
        stop_process_group(proc)
    pgids = {proc.pid for proc in procs}
    deadline = time.monotonic() + 20
    while (left := _processes_of(pgids, home)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def _run_report(instance: DagsterInstance, run_id: str) -> str:
    """The run's errors, failures and step stderr, for a failed assertion's message."""
    lines = []
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        error = getattr(event.event_specific_data, "error", None) if event else None
        if event and (error or event.event_type_value.endswith("FAILURE")):
            lines.append(f"{event.event_type_value} {record.step_key or ''}: {event.message or ''}"
                         + (f"\n{error.to_string()}" if error else ""))
        elif event is None and record.level >= 40:  # an ERROR logged by a step
            lines.append(f"{record.step_key}: {record.user_message}")
    manager = instance.compute_log_manager
    for record in instance.all_logs(run_id, of_type=DagsterEventType.LOGS_CAPTURED):
        data = record.dagster_event.event_specific_data
        try:  # diagnostics only: never hide the real failure
            stderr = manager.get_log_data(manager.build_log_key_for_run(run_id, data.file_key)).stderr
        except Exception as exc:
            stderr = f"(stderr unavailable: {exc!r})".encode()
        if stderr:
            lines.append(f"--- stderr of {data.step_keys}:\n{stderr.decode(errors='replace')[-2000:]}")
    return "\n".join(lines)[:12000]  # the failures first, then what the steps wrote to stderr


LOCATION_STATUS = """{ workspaceOrError { __typename ... on Workspace { locationEntries { name loadStatus
  locationOrLoadError { __typename ... on PythonError { message causes { message } } } } } } }"""


def _wait_for_location(base: str, timeout: float = 180) -> None:
    """Wait until the webserver has loaded the code location; fail with its load error when it has none.

    Reads the webserver's GraphQL status query (what its "Deployment" page shows): a location that fails to
    import is a product problem, not a UI one, and is reported as such instead of as a missing element."""
    deadline = time.monotonic() + timeout
    while True:
        request = urllib.request.Request(f"{base}/graphql", data=json.dumps({"query": LOCATION_STATUS}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            entries = json.load(response)["data"]["workspaceOrError"]["locationEntries"]
        entry = next((e for e in entries if e["name"] == LOCATION), None)
        if entry and entry["loadStatus"] == "LOADED" and entry["locationOrLoadError"]:
            loaded = entry["locationOrLoadError"]
            assert loaded["__typename"] == "RepositoryLocation", (
                f"the code location {LOCATION} failed to load:\n{loaded.get('message')}"
                + "".join(f"\ncaused by: {cause['message']}" for cause in loaded.get("causes") or []))
            return
        assert time.monotonic() < deadline, f"the code location {LOCATION} is not loaded after {timeout} s: {entries}"
        time.sleep(1)


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_launch_one_cell_of_datamaker_job_from_the_dagster_ui(ui_site, tmp_path):
    from playwright.sync_api import sync_playwright

    bucket_root, env, home, cells = ui_site
    assert CELL in cells, f"the demo world should hold {CELL}: {cells}"
    browser_path = chromium()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    daemon = _start(["dagster-daemon", "run", "-w", "workspace.yaml"], env, tmp_path / "daemon.log")
    webserver = _start(["dagster-webserver", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)], env,
                       tmp_path / "webserver.log")
    instance = DagsterInstance.from_config(str(home))
    page_errors: list[str] = []
    try:
        wait_for_port(port, webserver, timeout=180)
        _wait_for_location(base)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=browser_path, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.set_default_timeout(60_000)  # two cores shared with the code servers and the run
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            try:
                # 1. The asset graph of the `chips` group (Lineage > chips: /locations/<loc>/asset-groups/chips):
                #    the node of the `chips` asset (titled by a tooltip with its key), with as many partitions
                #    as `imagesim discover` registered.
                page.goto(f"{base}/locations/{LOCATION}/asset-groups/chips")
                chips_node = page.locator('[data-tooltip="chips"]')
                chips_node.wait_for(state="visible")
                page.locator('[data-tooltip="nodata_index"]').wait_for(state="visible")
                partitions = page.locator('a[href="/assets/chips?view=partitions"]', has_text="partitions")
                assert partitions.inner_text().strip() == f"{len(cells)} partitions"

                # 2. The job's page (Jobs > datamaker_job: /locations/<loc>/jobs/datamaker_job), its graph of
                #    asset groups, and its Launchpad: the dropdown beside "Materialize all…" > "Open launchpad"
                #    opens it as a dialog bound to the job ("Launchpad (configure assets)").
                page.goto(f"{base}/locations/{LOCATION}/jobs/{JOB}")
                page.get_by_text(JOB, exact=True).first.wait_for()  # the header's "Jobs / datamaker_job"
                materialize_all = page.get_by_role("button", name="Materialize all")
                materialize_all.wait_for()
                page.get_by_role("button", name="arrow_drop_down").click()  # the split button's caret icon
                page.get_by_role("menuitem", name="Open launchpad").click()
                # the modal dialog, not the closing menu popover (its "Open launchpad" matches "Launchpad" too)
                launchpad = page.get_by_role("dialog").filter(has_text="Launchpad (configure assets)")
                launchpad.wait_for()

                # 3. One partition: the "Partition" combobox lists the registered cells; filter and pick one.
                partition = launchpad.get_by_role("combobox")
                partition.click()
                page.get_by_role("menuitem", name=CELL, exact=True).wait_for()  # open before typing narrows it
                assert all(page.get_by_role("menuitem", name=c, exact=True).is_visible() for c in cells)
                partition.fill(CELL)
                page.get_by_role("menuitem", name=CELL, exact=True).click()
                assert partition.input_value() == CELL
                launchpad.get_by_text(f"partition: {CELL}").wait_for()  # the run's tags, shown above the config

                # 4. Launch: the run is queued (QueuedRunCoordinator) and the UI opens its page /runs/<run id>.
                launchpad.get_by_role("button", name=re.compile(r"(^|\s)Materialize$")).click()  # icon + text
                page.wait_for_url(f"{base}/runs/*")
                run_id = page.url.split("/runs/", 1)[1].split("?", 1)[0]
                page.get_by_text(f"partition: {CELL}").first.wait_for()

                # 5. The daemon dequeues and launches the run; wait for its end in the instance.
                deadline = time.monotonic() + RUN_TIMEOUT_S
                while True:
                    run = instance.get_run_by_id(run_id)
                    if run is not None and run.is_finished:
                        break
                    assert daemon.poll() is None, f"dagster-daemon exited:\n{_tail(tmp_path / 'daemon.log')}"
                    assert time.monotonic() < deadline, (
                        f"run {run_id} still {run and run.status} after {RUN_TIMEOUT_S} s\n"
                        f"{_run_report(instance, run_id)}\n--- daemon log:\n{_tail(tmp_path / 'daemon.log')}")
                    time.sleep(2)
                assert run.status == DagsterRunStatus.SUCCESS, (
                    f"run {run_id} ended {run.status}:\n{_run_report(instance, run_id)}")

                # 6. The run's page shows it succeeded too.
                page.get_by_text("Success", exact=True).first.wait_for()
                page.screenshot(path=str(tmp_path / "dagster-run.png"))
            except BaseException:
                page.screenshot(path=str(tmp_path / "dagster-ui-failure.png"), full_page=True)
                print(f"\nscreenshot of the page at failure: {tmp_path / 'dagster-ui-failure.png'} ({page.url})")
                raise
            finally:
                browser.close()

        # The run was launched from the UI, for the chosen cell, through the queue: nothing but the browser
        # launched a run (no sensor, schedule or API call of this test).
        runs = instance.get_runs()
        assert [r.run_id for r in runs] == [run_id]
        assert run.job_name == JOB
        assert run.tags.get("dagster/partition") == CELL
        assert run.tags.get("dagster/from_ui") == "true"  # set by the UI's launch mutation only
        assert not {"dagster/sensor_name", "dagster/schedule_name", "dagster/backfill"} & set(run.tags)
        events = [r.dagster_event.event_type for r in instance.all_logs(run_id) if r.dagster_event]
        assert DagsterEventType.RUN_ENQUEUED in events
        assert events.index(DagsterEventType.RUN_ENQUEUED) < events.index(DagsterEventType.RUN_STARTING)
        materialized = {r.dagster_event.asset_key.to_user_string() for r in instance.all_logs(
            run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)}
        assert materialized == {"ard_tile", "osm_data", "chips", "nodata_index", "chip_labels"}
        assert {r.dagster_event.partition for r in instance.all_logs(
            run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION)} == {CELL}
    finally:
        instance.dispose()
        left = _stop_all([daemon, webserver], home)
        print(f"\nwebserver and daemon logs: {tmp_path / 'webserver.log'}, {tmp_path / 'daemon.log'}")
        if page_errors:
            print("errors thrown in the page:\n" + "\n".join(page_errors))
    assert daemon.poll() is not None and webserver.poll() is not None
    assert not left, f"processes left after stopping the webserver and the daemon (killed): {left}"

    # The cell's outputs in the bucket: its published chips (as many as its manifest lists as written, nothing
    # staged), its nodata index, its OSM document and its labels; no other cell was touched.
    bucket = open_bucket(bucket_root)
    chips = [o.key for o in bucket.list(chip_cell_prefix(CELL)) if o.key.endswith(".jpg")]
    assert chips and all(o.size > 0 for o in bucket.list(chip_cell_prefix(CELL)))
    manifest = json.loads(bucket.read_text(chip_manifest_key(CELL)))
    assert manifest["cell"] == CELL
    assert len(chips) == sum(1 for row in manifest["chips"] if row["written"])
    assert not list(bucket.list(chip_staging_prefix(CELL)))
    for key in (nodata_index_key(CELL), osm_key(CELL), labels_key(CELL)):
        assert bucket.exists(key), key
    for other in set(cells) - {CELL}:
        assert not list(bucket.list(chip_cell_prefix(other))), other
        assert not bucket.exists(labels_key(other)), other
