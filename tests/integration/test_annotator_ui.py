"""What the annotator sees, in the real Label Studio UI in headless Chromium (Debian's
``chromium`` driven by Playwright; no browser download), against our backend running as a
real process. Each step saves a screenshot under ``artifacts/e2e/`` for a person to look at.

1. log in through the login form, open a classification task: our predicted choice is
   selected and the prediction's score is shown;
2. open a detection task: our boxes are listed as regions with their labels;
3. open a segmentation task, turn on Auto-Annotation, click with the smart keypoint tool:
   SAM's mask appears, is accepted and submitted; Label Studio stores a brush region and
   our backend receives the webhook;
4. after a retrain, the "Most informative first" view lists tasks in our ranking's order;
5. after the quality job, the "Suspected label errors" tab lists the annotated tasks by
   increasing ``label_quality``, the two injected label errors first.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from ml_backend.core.settings import Settings
from ml_backend.devtools.project_setup import (
    connect_backend,
    create_informative_view,
    create_project,
    retrieve_predictions,
    upload_images,
)
from ml_backend.jobs.kinds import TrainRequest
from ml_backend.labelstudio.api import LabelStudioAPI
from ml_backend.models.classifier.training import train_classifier
from ml_backend.runtime import Runtime

from .backend_process import BackendProcess, backend_env

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "artifacts" / "e2e"
CHROMIUM = Path("/usr/bin/chromium")
# Without these the browser stalls on network calls (this machine has no internet).
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


@pytest.fixture(scope="module")
def page(label_studio: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A logged-in page of headless Chromium (a fresh profile), through the login form."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} not found: bash scripts/setup_env.sh --with-browser",
                    pytrace=False)
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM),
            args=CHROMIUM_FLAGS, headless=True, viewport={"width": 1400, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        tab = context.new_page()
        tab.goto(f"{label_studio.url}/user/login/")
        tab.fill("input[name=email]", label_studio.username)
        tab.fill("input[name=password]", label_studio.password)
        tab.click("button[type=submit], input[type=submit]")
        tab.wait_for_url(re.compile(r".*/(projects/?|)$"))
        tab.screenshot(path=str(ARTIFACTS / "0-logged-in.png"))
        yield tab
        context.close()


def _open_task(page: Any, base: str, project: int, task: int) -> None:
    page.goto(f"{base}/projects/{project}/data?task={task}")
    page.wait_for_selector(".lsf-annotation-button__name")  # the labeling UI is up
    page.wait_for_load_state("networkidle")


def _digits_project(label_studio: Any, ls_client: Any, work: Path, count: int,
                    labeled: int) -> tuple[int, list[int], list[int], dict[str, str]]:
    """A digits project of ``count`` tasks whose classifier was trained on the first
    ``labeled`` (labels given to training directly, images read from Label Studio)."""
    from conftest import digit_images
    from fakes import FakeLabelStudioAPI, choice_task

    project = create_project(ls_client, "digits-ui",
                             REPO / "labeling_configs" / "digit_classification.xml")
    pngs, labels = digit_images(count)
    paths = []
    for i, png in enumerate(pngs):
        paths.append(work / "digits" / f"d{i:03d}.png")
        paths[-1].parent.mkdir(parents=True, exist_ok=True)
        paths[-1].write_bytes(png)
    ids = upload_images(label_studio.url, label_studio.api_key, project, paths)
    env = backend_env(label_studio, work)
    runtime = Runtime(Settings.from_env(env))
    data = {t.id: t.data for t in ls_client.tasks.list(project=project, page_size=100)}
    runtime.ls_api = FakeLabelStudioAPI(  # type: ignore[assignment]
        LabelStudioAPI(label_studio.url, label_studio.api_key).label_config(project),
        [choice_task(t, data[t]["image"], "digit", [str(label)])
         for t, label in zip(ids[:labeled], labels[:labeled], strict=True)])
    assert train_classifier(runtime, TrainRequest(project=project, mode="full")).status == "trained"
    return project, ids, list(labels), env


def test_1_classification_prediction_is_selected_with_its_score(label_studio, ls_client, page,
                                                                tmp_path: Path) -> None:
    project, ids, _, env = _digits_project(label_studio, ls_client, tmp_path, 45, 40)
    backend = BackendProcess(env, tmp_path / "backend.log")
    try:
        backend.wait_ready()
        connect_backend(ls_client, project, backend.url)
        retrieve_predictions(ls_client, project, ids[40:])
        task = ids[42]
        [prediction] = ls_client.tasks.get(task).predictions
        # The label our prediction names, whatever key it sits under: the UI must show it.
        chosen = next(v for v in prediction.result[0]["value"].values()
                      if isinstance(v, list))[0]
        _open_task(page, label_studio.url, project, task)
        page.screenshot(path=str(ARTIFACTS / "1-classification.png"))
        checked = page.locator("input[type=radio]:checked").evaluate_all(
            "nodes => nodes.map(n => n.closest('label') ? n.closest('label').innerText : '')")
        assert any(text.strip().startswith(chosen) for text in checked), (chosen, checked)
        score = page.locator("span[title^='Prediction score']").first
        assert score.get_attribute("title") == f"Prediction score = {prediction.score}"
        assert f"{100 * prediction.score:.2f}%" in score.inner_text()
    finally:
        backend.stop()


def test_2_detection_boxes_are_drawn_with_their_labels(label_studio, ls_client, page,
                                                       tmp_path: Path) -> None:
    from ml_backend.devtools.datasets import shape_scenes

    from yolo_fixture import png_bytes, train_tiny_yolo

    checkpoint = train_tiny_yolo(tmp_path / "tiny")
    project = create_project(ls_client, "shapes-ui",
                             REPO / "labeling_configs" / "shapes_detection.xml")
    paths = []
    for i, scene in enumerate(shape_scenes(3, seed=11)):
        paths.append(tmp_path / "shapes" / f"s{i}.png")
        paths[-1].parent.mkdir(parents=True, exist_ok=True)
        paths[-1].write_bytes(png_bytes(scene.pixels))
    ids = upload_images(label_studio.url, label_studio.api_key, project, paths)
    backend = BackendProcess(backend_env(
        label_studio, tmp_path, YOLO_CHECKPOINT=str(checkpoint), DETECTOR_IMAGE_SIZE="64",
        DETECTOR_MIN_SCORE="0.0"), tmp_path / "backend.log")
    try:
        backend.wait_ready()
        connect_backend(ls_client, project, backend.url)
        retrieve_predictions(ls_client, project, ids)
        task = max(ids, key=lambda t: len(ls_client.tasks.get(t).predictions[0].result))
        [prediction] = ls_client.tasks.get(task).predictions
        labels = sorted(r["value"]["rectanglelabels"][0] for r in prediction.result)
        assert labels, "the detector drew no box"
        _open_task(page, label_studio.url, project, task)
        page.screenshot(path=str(ARTIFACTS / "2-detection.png"))
        # The region list is virtualised: the rendered rows are our regions, in our labels.
        listed = [t.strip() for t in page.locator(".lsf-outliner-item__title").all_inner_texts()]
        assert len(listed) >= min(len(labels), 5), (listed, labels)
        assert all(listed.count(label) <= labels.count(label) for label in listed), listed
    finally:
        backend.stop()


def _metric(backend: BackendProcess, prefix: str) -> float:
    text = requests.get(f"{backend.url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(prefix))


def _wait(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


@pytest.mark.parametrize("generation", ["sam1", "sam2.1"])
def test_3_smart_click_gives_a_sam_mask_that_is_accepted_and_submitted(
        label_studio, ls_client, page, tmp_path: Path, generation: str) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    from sam_fixture import TINY_SAM2_1_TYPE, TINY_SAM_TYPE, distinct_scenes, save_tiny_sam

    model_type = TINY_SAM_TYPE if generation == "sam1" else TINY_SAM2_1_TYPE
    shot = "3-sam" if generation == "sam1" else "3-sam2.1"  # the docs show SAM 1's
    project = create_project(ls_client, f"sam-ui-{generation}",
                             REPO / "labeling_configs" / "interactive_segmentation.xml")
    ids = upload_images(label_studio.url, label_studio.api_key, project,
                        distinct_scenes(tmp_path / "scenes", 2))
    backend = BackendProcess(backend_env(
        label_studio, tmp_path,
        SAM_CHECKPOINT=str(save_tiny_sam(tmp_path / "sam", model_type=model_type)),
        SAM_MODEL_TYPE=model_type), tmp_path / "backend.log")
    try:
        backend.wait_ready()
        connect_backend(ls_client, project, backend.url)
        _open_task(page, label_studio.url, project, ids[0])
        # The smart tools sit behind the last toolbar button; the keypoint one needs a label.
        # Auto-Annotation is a switch Label Studio remembers between tasks, so it is turned on
        # only where the smart tools are not shown yet (a second SAM run finds it on).
        auto_annotation = page.get_by_text("Auto-Annotation")
        auto_annotation.wait_for()
        smart_keypoint = page.locator(".lsf-toolbar__smart [aria-label=key-point-tool]").first
        page.locator(".lsf-toolbar button:visible").last.hover()
        try:
            smart_keypoint.wait_for(timeout=3000)
        except PlaywrightTimeoutError:
            auto_annotation.click()
            page.locator(".lsf-toolbar button:visible").last.hover()
        smart_keypoint.click()
        page.locator(".lsf-label", has_text="Object").nth(1).click()
        clicks = _metric(backend, 'mlb_predictions_total{family="segmenter"}')
        canvas = page.locator("canvas").first.bounding_box()
        # On the bright square (right half of the scene).
        page.mouse.click(canvas["x"] + 0.67 * canvas["width"], canvas["y"] + 0.5 * canvas["height"])
        accept = page.locator("[data-testid=bottombar-accept-suggestions-button]")
        accept.wait_for()
        assert _metric(backend, 'mlb_predictions_total{family="segmenter"}') == clicks + 1
        page.screenshot(path=str(ARTIFACTS / f"{shot}-suggestion.png"))
        accept.click()
        page.locator("[aria-label='Submit current annotation']").click()
        _wait(lambda: ls_client.tasks.get(ids[0]).annotations, 30, "no annotation stored")
        _open_task(page, label_studio.url, project, ids[0])  # the stored annotation
        page.screenshot(path=str(ARTIFACTS / f"{shot}-submitted.png"))
        [annotation] = ls_client.tasks.get(ids[0]).annotations
        brushes = [r for r in annotation["result"] if r["type"] == "brushlabels"]
        assert brushes and brushes[0]["value"]["brushlabels"] == ["Object"], annotation
        assert brushes[0]["value"]["rle"], "the brush region carries our RLE"
        _wait(lambda: _metric(backend, 'mlb_webhooks_total{action="ANNOTATION_CREATED"}') >= 1,
              30, "the backend received no ANNOTATION_CREATED webhook")
    finally:
        backend.stop()


def test_4_after_a_retrain_the_informative_view_follows_our_ranking(
        label_studio, ls_client, page, tmp_path: Path) -> None:
    project, ids, labels, env = _digits_project(label_studio, ls_client, tmp_path, 60, 40)
    backend = BackendProcess({**env, "RERANK_MIN_INTERVAL_S": "0", "RERANK_MAX_LOAD": "1"},
                             tmp_path / "backend.log")
    try:
        backend.wait_ready()
        connect_backend(ls_client, project, backend.url)
        view = create_informative_view(ls_client, project)
        before = requests.get(f"{backend.url}/versions?project={project}", timeout=10).json()
        ls_client.annotations.create(id=ids[40], result=[{  # one correction: a retrain
            "from_name": "digit", "to_name": "image", "type": "choices",
            "value": {"choices": [str(labels[40])]}}])

        def ranked() -> dict[str, Any] | None:
            response = requests.get(f"{backend.url}/ranking/{project}?limit=100", timeout=10)
            state = response.json() if response.ok else None
            newest = requests.get(f"{backend.url}/versions?project={project}",
                                  timeout=10).json()["versions"][0]
            done = state is not None and state["version"] == newest != before["versions"][0]
            return state if done and ls_client.projects.get(id=project).model_version \
                == newest else None

        _wait(lambda: ranked() is not None, 120, backend.log_tail())
        state = ranked()
        assert state is not None
        score = {item["task"]: item["score"] for item in state["top"]}
        page.goto(f"{label_studio.url}/projects/{project}/data?tab={view}")
        page.wait_for_selector("[data-testid=table-row]")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(ARTIFACTS / "4-most-informative-first.png"))
        shown = page.locator("[data-testid=table-row-wrapper]").evaluate_all(
            """rows => rows.map(r => [parseFloat(r.style.top),
                   r.querySelector('input[aria-label^="Select Task"]').getAttribute('aria-label')])
                 .sort((a, b) => a[0] - b[0]).map(x => parseInt(x[1].split(' ').pop()))""")
        assert len(shown) >= len(state["batch"])
        # The head of the queue is our batch, in our order; after it, our scores ascending
        # (tasks with equal scores may come in either order).
        assert shown[:len(state["batch"])] == state["batch"], (shown, state["batch"])
        assert [score[t] for t in shown] == sorted(score.values())[:len(shown)]
    finally:
        backend.stop()


# The Data Manager grid as the UI draws it: column titles, and each rendered row's task id
# and cell texts in the same column order, top to bottom (rows are absolutely placed).
_READ_GRID = """() => {
    const heads = [...document.querySelectorAll('[class*="table-head__draggable"]')]
        .map(h => h.innerText.trim());
    const rows = [...document.querySelectorAll('[data-testid=table-row-wrapper]')]
        .sort((a, b) => parseFloat(a.style.top) - parseFloat(b.style.top))
        .map(r => ({
            task: parseInt(r.querySelector('input[aria-label^="Select Task"]')
                .getAttribute('aria-label').split(' ').pop()),
            cells: [...r.querySelector('[data-testid=table-row]').children]
                .map(c => c.innerText.trim())}));
    return {heads, rows};
}"""


def test_5_suspected_label_errors_tab_lists_the_injected_errors_first(
        label_studio, ls_client, page, tmp_path: Path) -> None:
    from ml_backend.devtools.datasets import write_digit_pngs
    from ml_backend.quality.views import LABEL_ERRORS_VIEW, QUALITY_KEY

    per_class = 10  # as in test_quality.py: enough for 5-fold out-of-fold probabilities
    digits = write_digit_pngs(tmp_path / "digits", 100, size=32)
    zeros = [path for path, label in digits if label == 0][:per_class]
    ones = [path for path, label in digits if label == 1][:per_class]
    project = create_project(ls_client, "quality-ui",
                             REPO / "labeling_configs" / "digit_classification.xml")
    ids = upload_images(label_studio.url, label_studio.api_key, project, [*zeros, *ones])
    zero_ids = ids[:per_class]
    errors = {zero_ids[3]: "1", ids[per_class + 5]: "0"}  # a 0 labeled "1", a 1 labeled "0"
    backend = BackendProcess(backend_env(label_studio, tmp_path, FULL_SYNC_INTERVAL_S="0",
                                         RERANK_MIN_INTERVAL_S="0"), tmp_path / "backend.log")
    try:
        backend.wait_ready()
        connect_backend(ls_client, project, backend.url)
        for task in ids:  # through the API, so Label Studio sends the webhooks
            label = errors.get(task, "0" if task in zero_ids else "1")
            ls_client.annotations.create(id=task, result=[{
                "from_name": "digit", "to_name": "image", "type": "choices",
                "value": {"choices": [label]}}])

        def scored() -> bool:  # the quality job chained by a training that saw every label
            return any(j["name"] == "quality" and j["status"] == "finished"
                       and (j.get("result") or {}).get("n_labeled") == len(ids)
                       and j["result"].get("status") == "scored" for j in backend.jobs())

        _wait(scored, 300, backend.log_tail())
        backend.wait_idle(timeout_s=300)  # no later training or scoring while we read
        [view] = [v.id for v in ls_client.views.list(project=project)
                  if (v.data or {}).get("title") == LABEL_ERRORS_VIEW]
        quality = {int(t.id): float(t.data[QUALITY_KEY])
                   for t in ls_client.tasks.list(project=project, fields="all")
                   if QUALITY_KEY in t.data}
        # The quality job made the tab hiding what a tab made in the UI hides.
        assert (ls_client.views.get(id=str(view)).data or {}).get("hiddenColumns"), view
        page.goto(f"{label_studio.url}/projects/{project}/data?tab={view}")
        page.wait_for_selector("[data-testid=table-row]")
        page.wait_for_load_state("networkidle")
        # Should the score's column still sit right of the viewport, bring it into view.
        page.locator("[class*='table-head__draggable']",
                     has_text=QUALITY_KEY).scroll_into_view_if_needed()
        page.screenshot(path=str(ARTIFACTS / "5-suspected-label-errors.png"))
        assert not page.get_by_text("Runtime error").is_visible()  # Label Studio's error modal
        grid = page.evaluate(_READ_GRID)
        [column] = [i for i, title in enumerate(grid["heads"]) if QUALITY_KEY in title]
        shown = [(row["task"], float(row["cells"][column])) for row in grid["rows"]]
        assert len(shown) >= 2, grid
        # What the UI shows is Label Studio's stored score, in increasing order, and the
        # injected errors are the first two rows.
        assert all(abs(value - quality[task]) < 1e-3 for task, value in shown), (shown, quality)
        values = [value for _, value in shown]
        assert values == sorted(values), shown
        assert {task for task, _ in shown[:2]} == set(errors), (shown, errors)
        assert not backend.failed_jobs(), backend.failed_jobs()
    finally:
        backend.stop()
