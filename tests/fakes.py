"""A stand-in for the backend's own Label Studio port
(``ml_backend.labelstudio.api.LabelStudioAPI``) in unit tests. The real Label Studio is used
by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ml_backend.core.errors import LabelStudioUnavailable, NotFound
from ml_backend.labelstudio.api import LabeledTask, TaskState, labeled_tasks_from_export


def choice_task(task_id: int, image: str, control: str, choices: list[str],
                annotation_id: int | None = None, updated_at: str = "2026-01-01T00:00:00Z"
                ) -> dict[str, Any]:
    """A task as Label Studio's JSON export writes it, with one choices annotation."""
    return {"id": task_id, "data": {"image": image}, "annotations": [{
        "id": annotation_id or task_id, "updated_at": updated_at, "was_cancelled": False,
        "result": [{"from_name": control, "to_name": "image", "type": "choices",
                    "value": {"choices": choices}}]}]}


class FakeLabelStudioAPI:
    def __init__(self, label_config: str, tasks: list[dict[str, Any]]) -> None:
        self.config = label_config
        self.tasks = tasks
        self.exports = 0
        self.announced: list[tuple[int, str]] = []
        self.unlabeled: list[dict[str, Any]] = []
        self.predictions: list[dict[str, Any]] = []
        self.views: dict[str, dict[str, Any]] = {}
        self.data_updates = 0

    def label_config(self, project: int) -> str:
        return self.config

    def labeled_tasks(self, project: int) -> list[LabeledTask]:
        self.exports += 1
        return labeled_tasks_from_export(self.tasks)

    def set_model_version(self, project: int, version: str, is_ours: Any,
                          retitle: bool = True) -> None:
        assert is_ours(version)
        self.announced.append((project, version))

    def model_version(self, project: int) -> str | None:
        return next((v for p, v in reversed(self.announced) if p == project), None)

    def project_tasks(self, project: int) -> tuple[list[LabeledTask], list[dict[str, Any]]]:
        self.exports += 1
        return labeled_tasks_from_export(self.tasks), list(self.unlabeled)

    def import_predictions(self, project: int, predictions: list[dict[str, Any]]) -> int:
        # Like Label Studio on SQLite: rows before an unknown task are already stored.
        known = {t["id"] for t in self.unlabeled} | {t["id"] for t in self.tasks}
        for row in predictions:
            if row["task"] not in known:
                raise LabelStudioUnavailable(f"HTTP 400: task ID {row['task']} not found")
            self.predictions.append(row)
        return len(predictions)

    def prediction_versions(self, project: int) -> dict[str, int]:
        counts: dict[str, int] = {}
        for p in self.predictions:
            counts[p["model_version"]] = counts.get(p["model_version"], 0) + 1
        return counts

    def delete_predictions(self, project: int, version: str) -> None:
        self.predictions = [p for p in self.predictions if p["model_version"] != version]

    def update_task_data(self, task_id: int, data: dict[str, Any]) -> None:
        for task in self._all_tasks():
            if int(task["id"]) == task_id:
                task["data"] = dict(data)
                self.data_updates += 1
                return
        raise LabelStudioUnavailable(f"HTTP 404: task {task_id} not found")

    def task_predictions(self, task_id: int) -> list[dict[str, Any]]:
        # A prediction's id: its place in the list, from 1.
        return [{"id": number, **p} for number, p in enumerate(self.predictions, start=1)
                if p["task"] == task_id]

    def set_prediction_neighbors(self, prediction_id: int, neighbors: list[int]) -> None:
        self.predictions[prediction_id - 1]["neighbors"] = list(neighbors)

    def ensure_view(self, project: int, title: str, data: dict[str, Any]) -> int:
        self.views.setdefault(title, data)
        return list(self.views).index(title) + 1

    def _all_tasks(self) -> list[dict[str, Any]]:
        return [*self.tasks, *self.unlabeled]

    def task_pages(self, project: int, page_size: int = 100) -> Iterator[list[TaskState]]:
        states = [self.task(int(t["id"])) for t in self._all_tasks()]
        for start in range(0, len(states), page_size):
            yield states[start:start + page_size]

    def task(self, task_id: int) -> TaskState:
        for t in self._all_tasks():
            if int(t["id"]) == task_id:
                versions = tuple(p["model_version"] for p in self.predictions
                                 if p["task"] == task_id)
                return TaskState(task_id, t["data"], versions)
        raise LabelStudioUnavailable(f"HTTP 404: task {task_id} not found")


class QualityFakeAPI(FakeLabelStudioAPI):
    """The fake Label Studio, with the calls /similar makes."""

    def __init__(self, label_config: str, tasks: list[dict[str, Any]], project: int) -> None:
        super().__init__(label_config, tasks)
        self.project = project

    def existing_label_config(self, project: int) -> str:
        if project != self.project:
            raise NotFound(f"Label Studio has no project {project}")
        return self.config

    def task_project(self, task_id: int) -> int:
        if any(int(t["id"]) == task_id for t in self._all_tasks()):
            return self.project
        raise NotFound(f"Label Studio has no task {task_id}")
