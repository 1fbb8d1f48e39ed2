"""The savings report on hand-computed cases: one pre-label against the annotation made from
it, the aggregate per model version, and GET /report and `ml-backend report` on a fake Label
Studio (the real one: tests/integration/test_report.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml_backend.cli import main
from ml_backend.core.errors import LabelStudioUnavailable, NotFound
from ml_backend.core.settings import Settings
from ml_backend.labelstudio.api import LabelStudioAPI
from ml_backend.labelstudio.rle import mask_to_rle
from ml_backend.reporting.effort import CostModel
from ml_backend.reporting.regions import compare_results
from ml_backend.reporting.savings import (
    AnnotationRecord,
    PredictionRecord,
    parent_prediction,
    records_from_export,
    report_table,
    savings_report,
)

from app_fixture import backend_app


def box(x: float, y: float, w: float, h: float, label: str = "car", rid: str = "") -> dict:
    """A rectangle in percent of a 100 × 100 image (so percent = pixels)."""
    return {"id": rid or f"{x}-{y}-{w}-{h}", "from_name": "label", "to_name": "image",
            "type": "rectanglelabels", "original_width": 100, "original_height": 100,
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0,
                      "rectanglelabels": [label]}}


def choice(*labels: str) -> dict:
    return {"from_name": "class", "to_name": "image", "type": "choices",
            "value": {"choices": list(labels)}}


def brush(mask: np.ndarray, label: str = "cat", rid: str = "m") -> dict:
    height, width = mask.shape
    return {"id": rid, "from_name": "seg", "to_name": "image", "type": "brushlabels",
            "original_width": width, "original_height": height,
            "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": [label]}}


def polygon(points: list[list[float]], label: str = "cat", rid: str = "p",
            size: int | None = None) -> dict:
    item = {"id": rid, "from_name": "poly", "to_name": "image", "type": "polygonlabels",
            "value": {"points": points, "closed": True, "polygonlabels": [label]}}
    if size:
        item.update(original_width=size, original_height=size)
    return item


# --- one pre-label against its annotation ----------------------------------------------------
def test_a_perfect_pre_box_is_accepted_and_saves_draw_minus_accept() -> None:
    c = compare_results([box(10, 10, 40, 40)], [box(10, 10, 40, 40)])
    assert (c.accepted, c.edited, c.deleted, c.added) == (1, 0, 0, 0)
    assert (c.manual_s, c.fixing_s) == (7.0, 1.0) and c.untouched


def test_a_missing_box_is_added_by_hand_and_saves_nothing() -> None:
    c = compare_results([], [box(10, 10, 40, 40)])
    assert (c.accepted, c.added, c.manual_s, c.fixing_s) == (0, 1, 7.0, 7.0)
    assert not c.untouched


def test_a_false_positive_is_deleted_and_costs_a_click() -> None:
    c = compare_results([box(10, 10, 40, 40)], [])
    assert (c.deleted, c.added, c.manual_s, c.fixing_s) == (1, 0, 0.0, 1.0)


def test_an_adjusted_box_is_edited_with_its_iou() -> None:
    # Truth 32 × 40 inside the 40 × 40 pre-box: IoU 0.8 → adjusted (3 s).
    c = compare_results([box(10, 10, 40, 40)], [box(10, 10, 32, 40)])
    assert (c.accepted, c.edited, c.class_changed) == (0, 1, 0)
    assert c.edited_ious == [pytest.approx(0.8)]
    assert (c.manual_s, c.fixing_s) == (7.0, 3.0)


def test_a_relabelled_box_is_edited_with_a_class_change() -> None:
    c = compare_results([box(10, 10, 40, 40, "car")], [box(10, 10, 40, 40, "bus")])
    assert (c.accepted, c.edited, c.class_changed, c.regions_right) == (0, 1, 1, 0)
    assert c.edited_ious == [1.0]
    assert c.fixing_s == 1.0 + 3.0  # accept the box, change its class


def test_a_far_box_is_a_delete_and_a_draw() -> None:
    c = compare_results([box(0, 0, 10, 10)], [box(50, 50, 10, 10)])
    assert (c.accepted, c.edited, c.deleted, c.added) == (0, 0, 1, 1)
    assert c.fixing_s == 1.0 + 7.0


def test_choices() -> None:
    right = compare_results([choice("cat")], [choice("cat")])
    assert (right.accepted, right.manual_s, right.fixing_s) == (1, 3.0, 1.0)
    wrong = compare_results([choice("dog")], [choice("cat")])
    assert (wrong.edited, wrong.class_changed, wrong.fixing_s) == (1, 1, 3.0)
    assert wrong.edited_ious == []  # a class has no IoU
    added = compare_results([box(1, 1, 5, 5)], [box(1, 1, 5, 5), choice("cat")])
    assert (added.accepted, added.added, added.manual_s, added.fixing_s) == (1, 1, 10.0, 4.0)


def test_without_a_pre_label_everything_is_added_and_nothing_saved() -> None:
    c = compare_results(None, [box(10, 10, 40, 40), box(60, 60, 10, 10), choice("cat")])
    assert (c.added, c.accepted, c.deleted) == (3, 0, 0)
    assert c.manual_s == c.fixing_s == 7.0 + 7.0 + 3.0


def test_brush_masks_by_iou() -> None:
    truth = np.zeros((20, 20), bool)
    truth[2:12, 2:12] = True
    grown = truth.copy()
    grown[2:12, 12:14] = True  # 100 of 120 pixels: IoU 0.833
    accepted = compare_results([brush(truth)], [brush(truth)])
    assert (accepted.accepted, accepted.fixing_s, accepted.manual_s) == (1, 1.0, 79.0)
    edited = compare_results([brush(grown)], [brush(truth)])
    assert edited.edited == 1 and edited.edited_ious == [pytest.approx(100 / 120)]
    assert edited.fixing_s == 79.0  # an edited mask counts as redrawn (conservative)


def test_polygons_by_iou_and_by_id_when_they_cannot_be_decoded() -> None:
    square = [[10, 10], [60, 10], [60, 60], [10, 60]]
    c = compare_results([polygon(square)], [polygon(square, "dog")])
    assert (c.edited, c.class_changed) == (1, 1)
    # A brush without an image size cannot be decoded: regions are compared by id.
    mask = np.ones((4, 4), bool)
    undecodable = {**brush(mask, rid="a"), "original_width": None}
    moved = {**undecodable, "value": {**undecodable["value"], "rle": [0, 1]}}
    by_id = compare_results([undecodable, {**undecodable, "id": "b"}],
                            [undecodable, moved | {"id": "b"}, {**undecodable, "id": "c"}])
    assert (by_id.accepted, by_id.edited, by_id.deleted, by_id.added) == (1, 1, 0, 1)
    assert by_id.edited_ious == []


# --- which pre-label an annotation started from -----------------------------------------------
PRED_1 = PredictionRecord(1, "v1", [choice("cat")], "2026-01-01T10:00:00Z")
PRED_2 = PredictionRecord(2, "v2", [choice("dog")], "2026-01-02T10:00:00Z")


@pytest.mark.parametrize(("annotation", "expected"), [
    ({"parent_prediction": 1, "created_at": "2026-01-03T00:00:00Z"}, PRED_1),
    ({"parent_prediction": None, "created_at": "2026-01-03T00:00:00Z"}, PRED_2),
    ({"created_at": "2026-01-01T12:00:00.123456Z"}, PRED_1),  # v2 came later
    ({"created_at": "2025-12-31T00:00:00Z"}, None),  # before any prediction
    ({"created_at": ""}, None),
    ({"parent_prediction": 99, "prediction": {"id": 99, "model_version": "old",
                                              "result": []}}, PredictionRecord(99, "old", [], "")),
])
def test_parent_prediction(annotation: dict, expected: PredictionRecord | None) -> None:
    assert parent_prediction(annotation, [PRED_1, PRED_2]) == expected


def export(*tasks: tuple[list[dict], list[dict]]) -> list[dict[str, Any]]:
    """Tasks as Label Studio exports them: ``(predictions, annotations)`` each."""
    return [{"id": i + 1, "data": {"image": f"/img/{i}.png"}, "predictions": preds,
             "annotations": anns} for i, (preds, anns) in enumerate(tasks)]


def pred(pid: int, version: str, result: list[dict]) -> dict:
    return {"id": pid, "model_version": version, "result": result, "score": 0.5,
            "created_at": "2026-01-01T00:00:00Z"}


def ann(aid: int, result: list[dict], parent: int | None, lead: float | None = None,
        cancelled: bool = False) -> dict:
    return {"id": aid, "result": result, "parent_prediction": parent, "lead_time": lead,
            "was_cancelled": cancelled, "created_at": "2026-01-05T00:00:00Z"}


PROJECT = export(
    # v1 accepted as it was, then v1 with a deleted false positive and a box drawn by hand.
    ([pred(1, "v1", [box(10, 10, 40, 40)])], [ann(1, [box(10, 10, 40, 40)], 1, 10.0)]),
    ([pred(2, "v1", [box(10, 10, 40, 40), box(70, 70, 10, 10)])],
     [ann(2, [box(10, 10, 40, 40), box(0, 60, 10, 10)], 2, 20.0)]),
    # v2's class changed; one annotation without any prediction; one skipped.
    ([{**pred(3, "v2", [choice("dog")]), "created_at": "2026-01-02T00:00:00Z"}],
     [ann(3, [choice("cat")], 3)]),
    ([], [ann(4, [box(10, 10, 40, 40)], None, 30.0), ann(5, [], None, 5.0, cancelled=True)]),
)


def test_the_report_per_version() -> None:
    report = savings_report(7, records_from_export(PROJECT))
    assert (report.annotations, report.skipped) == (3 + 1, 1)
    v1, v2 = report.versions
    assert v1.model_version == "v1" and v2.model_version == "v2"
    assert (v1.annotations, v1.untouched, v1.accepted, v1.edited, v1.deleted, v1.added) == \
        (2, 1, 2, 0, 1, 1)
    # manual: 3 boxes × 7 s = 21; fixing: 1 + (1 + delete 1 + draw 7) = 10.
    assert (v1.manual_s, v1.fixing_s, v1.saved_s) == (21.0, 10.0, 11.0)
    assert v1.quality == {"class_accuracy": None, "region_precision": 0.6667,
                          "region_recall": 0.6667, "untouched_share": 0.5}
    assert (v2.edited, v2.class_changed, v2.saved_s) == (1, 1, 0.0)
    assert v2.quality["class_accuracy"] == 0.0
    manual = report.without_prelabel
    assert (manual.annotations, manual.added, manual.saved_s) == (1, 1, 0.0)
    assert report.saved_s == 11.0
    assert report.lead_time["with_prelabel"].annotations == 2
    assert report.lead_time["with_prelabel"].mean_s == 15.0
    assert report.lead_time["with_prelabel"].median_s == 15.0
    assert report.lead_time["without_prelabel"].mean_s == 30.0  # the skipped one left out
    table = report_table(report)
    assert "v1" in table and "(no pre-label)" in table and "11.0" in table


def test_costs_come_from_the_cost_model() -> None:
    report = savings_report(7, records_from_export(PROJECT), CostModel(draw_box_s=34.5))
    assert report.versions[0].manual_s == 3 * 34.5


def test_no_annotations_is_an_empty_report() -> None:
    report = savings_report(7, records_from_export([]))
    assert (report.annotations, report.skipped, report.versions, report.saved_s) == \
        (0, 0, [], 0.0)
    assert report.lead_time["with_prelabel"].mean_s is None
    assert report.as_dict()["without_prelabel"]["annotations"] == 0
    assert "0 annotations" in report_table(report)


def test_records_ignore_malformed_items() -> None:
    records = records_from_export([None, {"id": "x"}, {"id": 1, "annotations": [
        None, {"id": 2, "result": [None, choice("a")], "lead_time": True}]}])
    assert records == [AnnotationRecord(1, 2, [choice("a")], "", None, False, None)]


# --- GET /report/<project> and `ml-backend report` ---------------------------------------------
class FakeExport:
    def __init__(self, tasks: list[dict[str, Any]] | Exception) -> None:
        self.tasks = tasks

    def annotated_export(self, project: int) -> list[dict[str, Any]]:
        if isinstance(self.tasks, Exception):
            raise self.tasks
        return self.tasks


@pytest.mark.parametrize(("source", "status", "says"), [
    (FakeExport(PROJECT), 200, None),
    (FakeExport([]), 200, None),
    (FakeExport(NotFound("Label Studio has no project 7")), 404, "no project 7"),
    (FakeExport(LabelStudioUnavailable("cannot export project 7: connection refused")), 502,
     "connection refused"),
    (None, 400, "LABEL_STUDIO_URL"),
])
def test_report_route(make_settings: Callable[..., Settings], source: FakeExport | None,
                      status: int, says: str | None) -> None:
    with backend_app(make_settings(label_studio_url="http://127.0.0.1:1")) as (client, rt, _):
        rt.ls_api = source  # type: ignore[assignment]
        response = client.get("/report/7")
    assert response.status_code == status, response.get_json()
    body = response.get_json()
    if says:
        assert says in body["error"]
    else:
        assert body["project"] == 7 and body["cost_model"]["draw_box_s"] == 7.0


class _Status404(Exception):
    status_code = 404
    body = "Not found."


def test_an_unknown_project_is_not_found_not_unavailable() -> None:
    class Projects:
        def get(self, id: int) -> None:
            raise _Status404("not found")

    api = LabelStudioAPI("http://127.0.0.1:1", "key")
    api._client = type("Client", (), {"projects": Projects()})()  # type: ignore[assignment]
    with pytest.raises(NotFound, match="no project 5"):
        api.annotated_export(5)


def test_the_export_gets_full_prediction_records() -> None:
    """Label Studio's JSON export lists predictions by id; the records come from the
    project's prediction list, joined by task."""
    import json

    exported = [{"id": 1, "predictions": [10], "annotations": []},
                {"id": 2, "predictions": [], "annotations": []}]
    listed = [{"id": 10, "task": 1, "model_version": "v1", "result": []},
              {"id": 11, "task": 3, "model_version": "v1", "result": []}]
    client = type("Client", (), {
        "projects": type("P", (), {
            "get": staticmethod(lambda id: None),
            "exports": type("E", (), {"download_sync": staticmethod(
                lambda **kw: [json.dumps(exported).encode()])})()})(),
        "predictions": type("L", (), {"list": staticmethod(lambda project: listed)})()})()
    api = LabelStudioAPI("http://127.0.0.1:1", "key")
    api._client = client  # type: ignore[assignment]
    tasks = api.annotated_export(5)
    assert [t["predictions"] for t in tasks] == [[listed[0]], []]


def _api_answering(bodies: list[bytes]) -> tuple[LabelStudioAPI, list[dict[str, Any]]]:
    """A client whose export answers ``bodies`` in turn; the export calls it received."""
    calls: list[dict[str, Any]] = []

    def download_sync(**kw: Any) -> list[bytes]:
        calls.append(kw)
        return [bodies[min(len(calls), len(bodies)) - 1]]

    client = type("Client", (), {"projects": type("P", (), {
        "get": staticmethod(lambda id: type("Project", (), {"label_config": "<View/>"})()),
        "exports": type("E", (), {"download_sync": staticmethod(download_sync)})()})()})()
    api = LabelStudioAPI("http://127.0.0.1:1", "key")
    api._client = client  # type: ignore[assignment]
    return api, calls


def test_an_export_cut_by_label_studio_is_fetched_again(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    """Two identical exports at once share Label Studio's export file, so one can come back
    empty or cut with status 200 (seen in CI: a re-rank next to a quality job)."""
    import json

    from ml_backend.labelstudio import api as api_module

    monkeypatch.setattr(api_module, "EXPORT_RETRY_WAIT_S", 0.0)
    tasks = [{"id": 1, "data": {}, "annotations": []}]
    whole = json.dumps(tasks).encode()
    api, calls = _api_answering([b"", whole[:7], whole])
    assert api.all_tasks_export(5) == tasks
    assert len(calls) == 3 and all(c["id"] == 5 for c in calls)


def test_an_export_that_is_never_json_is_one_clear_error(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    from ml_backend.labelstudio import api as api_module

    monkeypatch.setattr(api_module, "EXPORT_RETRY_WAIT_S", 0.0)
    api, calls = _api_answering([b"<html>busy</html>"])
    with pytest.raises(LabelStudioUnavailable,
                       match=r"cannot export project 5: 3 answers in a row were not JSON"):
        api.all_tasks_export(5)
    assert len(calls) == api_module.EXPORT_ATTEMPTS == 3


def test_cli_report_prints_a_table_and_writes_a_plot(monkeypatch: pytest.MonkeyPatch,
                                                     tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("LABEL_STUDIO_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "key")
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("ml_backend.labelstudio.api.LabelStudioAPI",
                        lambda url, key: FakeExport(PROJECT))
    png = tmp_path / "report.png"
    assert main(["report", "--project", "7", "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("project 7: 4 annotations (1 skipped), 11.0 s saved")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setattr("ml_backend.labelstudio.api.LabelStudioAPI",
                        lambda url, key: FakeExport(NotFound("Label Studio has no project 7")))
    assert main(["report", "--project", "7"]) == 1
    assert "no project 7" in capsys.readouterr().err
