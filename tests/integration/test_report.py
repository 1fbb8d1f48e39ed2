"""GET /report against the real Label Studio: predictions of two model versions created
through its API, annotations that accept them, edit a box, change a class, delete a
pre-box, add boxes by hand, start from no pre-label or skip the task; every count checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from ml_backend.devtools.project_setup import create_project

from .backend_process import BackendProcess, backend_env

REPO = Path(__file__).resolve().parents[2]


def box(x: float, y: float, w: float, h: float, label: str) -> dict[str, Any]:
    """A rectangle on a 100 × 100 image (percent = pixels)."""
    return {"from_name": "shape", "to_name": "image", "type": "rectanglelabels",
            "original_width": 100, "original_height": 100,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0,
                      "rectanglelabels": [label]}}


def choice(label: str) -> dict[str, Any]:
    return {"from_name": "choice", "to_name": "image", "type": "choices",
            "value": {"choices": [label]}}


def tasks(ls_client: Any, project: int, n: int) -> list[int]:
    ls_client.projects.import_tasks(id=project, request=[
        {"image": f"/data/upload/{project}/img{i}.png"} for i in range(n)])
    return sorted(int(t.id) for t in ls_client.tasks.list(project=project))


def predict(ls_client: Any, task: int, version: str, result: list[dict]) -> int:
    prediction = ls_client.predictions.create(task=task, result=result, model_version=version,
                                              score=0.5)
    return int(prediction.id)


def annotate(ls_client: Any, task: int, result: list[dict], parent: int | None,
             lead_time: float, **extra: Any) -> None:
    if parent is not None:
        extra["parent_prediction"] = parent
    ls_client.annotations.create(id=task, result=result, lead_time=lead_time, **extra)


def by_version(report: dict[str, Any]) -> dict[str | None, dict[str, Any]]:
    rows = {v["model_version"]: v for v in report["versions"]}
    rows[None] = report["without_prelabel"]
    return rows


@pytest.mark.integration
def test_report_counts_what_annotators_did(label_studio, ls_client, tmp_path: Path) -> None:
    backend = BackendProcess(backend_env(label_studio, tmp_path), tmp_path / "backend.log")
    try:
        detection = create_project(ls_client, "report-boxes",
                                   REPO / "labeling_configs" / "shapes_detection.xml")
        t = tasks(ls_client, detection, 7)
        a, b, c, d = (box(10, 10, 40, 40, "circle"), box(60, 10, 30, 30, "square"),
                      box(10, 60, 20, 20, "circle"), box(60, 60, 20, 20, "triangle"))
        # (1) accepted as it was; (2) a box adjusted: 32 × 40 of the 40 × 40, IoU 0.8;
        # (3) a false positive deleted; (4) a missed box added by hand; (5) v2's class
        # changed; (6) no pre-label at all; (7) accepted, parent left to the time fallback.
        p1 = predict(ls_client, t[0], "v1", [a])
        annotate(ls_client, t[0], [a], p1, 10.0)
        p2 = predict(ls_client, t[1], "v1", [a])
        annotate(ls_client, t[1], [box(10, 10, 32, 40, "circle")], p2, 20.0)
        p3 = predict(ls_client, t[2], "v1", [a, d])
        annotate(ls_client, t[2], [a], p3, 30.0)
        p4 = predict(ls_client, t[3], "v1", [b])
        annotate(ls_client, t[3], [b, c], p4, 40.0)
        p5 = predict(ls_client, t[4], "v2", [a])
        annotate(ls_client, t[4], [box(10, 10, 40, 40, "square")], p5, 50.0)
        annotate(ls_client, t[5], [a, c], None, 70.0)
        predict(ls_client, t[6], "v1", [b])
        annotate(ls_client, t[6], [b], None, 60.0)

        classes = create_project(ls_client, "report-classes",
                                 REPO / "labeling_configs" / "image_classification.xml")
        u = tasks(ls_client, classes, 3)
        q1 = predict(ls_client, u[0], "c1", [choice("Cat")])
        annotate(ls_client, u[0], [choice("Cat")], q1, 5.0)
        q2 = predict(ls_client, u[1], "c1", [choice("Dog")])
        annotate(ls_client, u[1], [choice("Cat")], q2, 6.0)
        annotate(ls_client, u[2], [], None, 1.0, was_cancelled=True)

        empty = create_project(ls_client, "report-empty",
                               REPO / "labeling_configs" / "shapes_detection.xml")
        tasks(ls_client, empty, 2)

        backend.wait_ready()
        response = requests.get(f"{backend.url}/report/{detection}", timeout=60)
        assert response.status_code == 200, response.text
        report = response.json()
        assert (report["project"], report["annotations"], report["skipped"]) == \
            (detection, 7, 0)
        rows = by_version(report)
        assert [v["model_version"] for v in report["versions"]] == ["v1", "v2"]
        v1, v2, manual = rows["v1"], rows["v2"], rows[None]
        counts = ("annotations", "untouched", "accepted", "edited", "class_changed",
                  "deleted", "added")
        assert {k: v1[k] for k in counts} == {
            "annotations": 5, "untouched": 2, "accepted": 4, "edited": 1,
            "class_changed": 0, "deleted": 1, "added": 1}
        assert v1["mean_edited_iou"] == pytest.approx(0.8)
        # Drawn by hand: 6 boxes × 7 s; fixed: 1 + 3 + (1 + 1) + (1 + 7) + 1 s.
        assert (v1["manual_s"], v1["fixing_s"], v1["saved_s"]) == (42.0, 15.0, 27.0)
        assert v1["quality"] == {"class_accuracy": None, "region_precision": 0.8333,
                                 "region_recall": 0.8333, "untouched_share": 0.4}
        assert {k: v2[k] for k in counts} == {
            "annotations": 1, "untouched": 0, "accepted": 0, "edited": 1,
            "class_changed": 1, "deleted": 0, "added": 0}
        assert (v2["saved_s"], v2["mean_edited_iou"]) == (3.0, 1.0)
        assert (manual["annotations"], manual["added"], manual["saved_s"]) == (1, 2, 0.0)
        assert report["saved_s"] == 30.0
        # Label Studio's stored lead_time, split by whether a pre-label was there.
        assert report["lead_time"]["with_prelabel"] == {"annotations": 6, "mean_s": 35.0,
                                                        "median_s": 35.0}
        assert report["lead_time"]["without_prelabel"]["annotations"] == 1

        report = requests.get(f"{backend.url}/report/{classes}", timeout=60).json()
        assert (report["annotations"], report["skipped"]) == (2, 1)
        [c1] = report["versions"]
        assert {k: c1[k] for k in counts} == {
            "annotations": 2, "untouched": 1, "accepted": 1, "edited": 1,
            "class_changed": 1, "deleted": 0, "added": 0}
        assert (c1["saved_s"], c1["quality"]["class_accuracy"]) == (2.0, 0.5)

        report = requests.get(f"{backend.url}/report/{empty}", timeout=60)
        assert report.status_code == 200
        assert (report.json()["annotations"], report.json()["versions"]) == (0, [])

        missing = requests.get(f"{backend.url}/report/{empty + 1000}", timeout=60)
        assert missing.status_code == 404
        assert f"no project {empty + 1000}" in missing.json()["error"]
    finally:
        backend.stop()
