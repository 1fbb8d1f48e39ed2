"""What the backend reads from and writes to Label Studio's API (the source of truth).

Training data is always taken from Label Studio, never only from webhook bodies, so that a
missed or repeated webhook loses nothing.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ml_backend.core.errors import LabelStudioUnavailable, NotFound
from ml_backend.core.jsonio import plain
from ml_backend.labelstudio.data_manager import default_hidden_columns

log = logging.getLogger(__name__)
EXPORT_ATTEMPTS = 3  # fetches of one export whose body is not JSON (see LabelStudioAPI._export)
EXPORT_RETRY_WAIT_S = 0.3


@dataclass(frozen=True)
class LabeledTask:
    """A task with the annotation that counts for training: the ground-truth one if any,
    else the most recently updated, non-cancelled one."""

    task_id: int
    data: dict[str, Any]
    annotation_id: int
    updated_at: str
    result: list[dict[str, Any]]


def pick_annotation(annotations: list[dict[str, Any]]) -> dict[str, Any] | None:
    usable = [a for a in annotations if not a.get("was_cancelled") and a.get("result")]
    if not usable:
        return None
    return max(usable, key=lambda a: (bool(a.get("ground_truth")), str(a.get("updated_at")),
                                      int(a.get("id") or 0)))


def labeled_tasks_from_export(tasks: list[dict[str, Any]]) -> list[LabeledTask]:
    """Label Studio's JSON export (tasks with ``annotations``) → :class:`LabeledTask` list."""
    out = []
    for task in tasks:
        annotation = pick_annotation(task.get("annotations") or [])
        if annotation is None or not isinstance(task.get("data"), dict):
            continue
        out.append(LabeledTask(
            task_id=int(task["id"]), data=task["data"], annotation_id=int(annotation["id"]),
            updated_at=str(annotation.get("updated_at") or ""),
            result=list(annotation.get("result") or []),
        ))
    return out


class LabelStudioAPI:
    """Thin wrapper over label-studio-sdk's client for the calls the backend makes."""

    def __init__(self, base_url: str, api_key: str, timeout_s: float = 30.0) -> None:
        from label_studio_sdk import LabelStudio

        self.base_url = base_url.rstrip("/")
        self._client = LabelStudio(base_url=self.base_url, api_key=api_key, timeout=timeout_s)

    def label_config(self, project: int) -> str:
        with _calling(f"read project {project}"):
            return str(self._client.projects.get(id=project).label_config)

    def labeled_tasks(self, project: int) -> list[LabeledTask]:
        """Every annotated task of ``project`` (one export request)."""
        return labeled_tasks_from_export(self._export(project, all_tasks=False))

    def project_tasks(self, project: int) -> tuple[list[LabeledTask], list[dict[str, Any]]]:
        """``(labeled, unlabeled)`` tasks of ``project`` from one export: unlabeled ones are
        those without a submitted annotation, as in Label Studio's ``total_annotations = 0``
        filter; those an annotator skipped carry ``"skipped": True``."""
        tasks = self._export(project, all_tasks=True)
        unlabeled = []
        for task in tasks:
            annotations = task.get("annotations") or []
            if isinstance(task.get("data"), dict) and all(a.get("was_cancelled")
                                                          for a in annotations):
                unlabeled.append({"id": int(task["id"]), "data": task["data"],
                                  "skipped": bool(annotations)})
        return labeled_tasks_from_export(tasks), unlabeled

    def task_pages(self, project: int, page_size: int = 100) -> Iterator[list[TaskState]]:
        """Every task of ``project``, a page at a time (the SDK's paginated task list), with
        the model versions of its predictions."""
        page: list[TaskState] = []
        with _calling(f"list tasks of project {project}"):
            records = iter(self._client.tasks.list(project=project, page_size=page_size,
                                                   fields="all"))
        while True:
            # Each step may fetch the next page; the caller's work between pages is not
            # wrapped (its errors are its own).
            with _calling(f"list tasks of project {project}"):
                task = next(records, None)
            if task is None:
                break
            page.append(task_state(task))
            if len(page) == page_size:
                yield page
                page = []
        if page:
            yield page

    def task(self, task_id: int) -> TaskState:
        """One task as it is now, with the model versions of its predictions; NotFound when
        Label Studio has no such task."""
        with _calling(f"read task {task_id}", missing=f"Label Studio has no task {task_id}"):
            return task_state(self._client.tasks.get(id=task_id))

    def task_project(self, task_id: int) -> int:
        """The project of a task; NotFound when Label Studio has no such task."""
        with _calling(f"read task {task_id}", missing=f"Label Studio has no task {task_id}"):
            task = self._client.tasks.get(id=task_id)
        project = task.get("project") if isinstance(task, dict) else getattr(task, "project",
                                                                              None)
        return int(project) if project is not None else -1

    def update_task_data(self, task_id: int, data: dict[str, Any]) -> None:
        """Replace a task's ``data`` (the caller merges: the data-quality marks are keys
        added to it, the rest is kept as read)."""
        with _calling(f"update task {task_id}"):
            self._client.tasks.update(id=task_id, data=plain(data))

    def task_predictions(self, task_id: int) -> list[dict[str, Any]]:
        """A task's predictions as full records (``id``, ``model_version``, ``neighbors``...)."""
        with _calling(f"list predictions of task {task_id}"):
            return [p.model_dump(mode="json") if hasattr(p, "model_dump") else dict(p)
                    for p in self._client.predictions.list(task=task_id)]

    def set_prediction_neighbors(self, prediction_id: int, neighbors: list[int]) -> None:
        """Fill ``Prediction.neighbors`` ("task IDs of the closest neighbors"): only this
        endpoint writes it (the bulk import and /predict answers drop the field)."""
        with _calling(f"update prediction {prediction_id}",
                      missing=f"Label Studio has no prediction {prediction_id}"):
            self._client.predictions.update(id=prediction_id, neighbors=neighbors)

    def ensure_view(self, project: int, title: str, data: dict[str, Any]) -> int:
        """The id of the project's Data Manager tab titled ``title``, created with ``data``
        (filters, ordering) when there is none, hiding the columns a tab made in the UI
        hides (:func:`default_hidden_columns`)."""
        with _calling(f"list the views of project {project}"):
            for view in self._client.views.list(project=project):
                view_data = getattr(view, "data", None) or {}
                if isinstance(view_data, dict) and view_data.get("title") == title \
                        and view.id is not None:
                    return int(view.id)
        data = {"title": title, **data}
        try:
            columns = self._raw("GET", "api/dm/columns", params={"project": project}).json()
            data["hiddenColumns"] = default_hidden_columns(columns, data)
        except Exception as exc:  # display only: the tab still works with every column
            log.warning("project %s: tab %r gets every column (cannot read the Data Manager "
                        "columns: %s)", project, title, _short(exc))
        with _calling(f"create a view in project {project}"):
            view = self._client.views.create(project=project, data=data)  # type: ignore[arg-type]
        if view.id is None:
            raise LabelStudioUnavailable("Label Studio returned a view without id")
        return int(view.id)

    def annotated_export(self, project: int) -> list[dict[str, Any]]:
        """The annotated tasks of ``project`` as Label Studio exports them (annotations with
        ``lead_time``, ``parent_prediction`` and ``created_at``), each task's
        ``predictions`` as full records (``id``, ``model_version``, ``result``,
        ``created_at``); NotFound when Label Studio has no such project.

        The JSON export lists a task's predictions by id only, so the records come from the
        project's prediction list (a second request)."""
        self._existing_project(project)
        tasks = self._export(project, all_tasks=False)
        by_task = self.prediction_records(project)
        return [{**task, "predictions": by_task.get(int(task["id"]), [])} for task in tasks]

    def _existing_project(self, project: int) -> Any:
        """The SDK's project record; NotFound when Label Studio has no such project."""
        with _calling(f"read project {project}", missing=f"Label Studio has no project "
                                                        f"{project}"):
            return self._client.projects.get(id=project)

    def existing_label_config(self, project: int) -> str:
        """The project's label config; NotFound when Label Studio has no such project."""
        return str(self._existing_project(project).label_config)

    def all_tasks_export(self, project: int) -> list[dict[str, Any]]:
        """Every task of ``project`` as Label Studio's JSON export has it (annotated or not,
        with ``annotations``, skipped ones included); NotFound when there is no such
        project."""
        self.existing_label_config(project)
        return self._export(project, all_tasks=True)

    def prediction_records(self, project: int) -> dict[int, list[dict[str, Any]]]:
        """The project's predictions as full records (``id``, ``model_version``, ``result``,
        ``created_at``), by task id."""
        with _calling(f"list predictions of project {project}"):
            records = [p.model_dump(mode="json") if hasattr(p, "model_dump") else dict(p)
                       for p in self._client.predictions.list(project=project)]
        by_task: dict[int, list[dict[str, Any]]] = {}
        for record in records:
            if isinstance(record.get("task"), int):
                by_task.setdefault(record["task"], []).append(record)
        return by_task

    def _export(self, project: int, all_tasks: bool) -> list[dict[str, Any]]:
        # Label Studio writes each export to a file named by project, minute and content hash,
        # then reads it back: two identical exports at once (a re-rank and a quality job) can
        # read each other's half-written file and answer 200 with a cut or empty body. Such a
        # body is fetched again, after a short random wait so the two drift apart.
        for attempt in range(1, EXPORT_ATTEMPTS + 1):
            with _calling(f"export project {project}"):
                body = b"".join(self._client.projects.exports.download_sync(
                    id=project, export_type="JSON", download_all_tasks=all_tasks))
            try:
                tasks = json.loads(body)
                break
            except ValueError as exc:
                if attempt == EXPORT_ATTEMPTS:
                    raise LabelStudioUnavailable(
                        f"cannot export project {project}: {EXPORT_ATTEMPTS} answers in a row "
                        f"were not JSON ({len(body)} bytes, {exc})") from exc
                log.warning("export of project %s was not JSON (%d bytes, try %d of %d): "
                            "fetching it again", project, len(body), attempt, EXPORT_ATTEMPTS)
                time.sleep(EXPORT_RETRY_WAIT_S * attempt * random.uniform(1.0, 2.0))
        if not isinstance(tasks, list):
            raise LabelStudioUnavailable(f"export of project {project} is not a task list")
        return [t for t in tasks if isinstance(t, dict) and "id" in t]

    def import_predictions(self, project: int, predictions: list[dict[str, Any]],
                           chunk: int = 1000) -> int:
        """Store ``predictions`` (each with ``task``, ``result``, ``score``,
        ``model_version``) in bulk; returns how many were created."""
        from label_studio_sdk import PredictionRequest

        created = 0
        with _calling(f"import predictions into project {project}"):
            for start in range(0, len(predictions), chunk):
                batch = [PredictionRequest(**plain(p))
                         for p in predictions[start:start + chunk]]
                response = self._client.projects.import_predictions(id=project, request=batch)
                created += int(getattr(response, "created", None) or len(batch))
        return created

    def prediction_versions(self, project: int) -> dict[str, int]:
        """The model versions the project's predictions carry, with their counts."""
        with _calling(f"list model versions of project {project}"):
            data = self._raw("GET", f"api/projects/{project}/model-versions/").json()
        return {str(k): int(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def delete_predictions(self, project: int, version: str) -> None:
        """Delete the project's predictions of one model version (no SDK method for it)."""
        with _calling(f"delete predictions {version!r} of project {project}"):
            self._raw("DELETE", f"api/projects/{project}/model-versions/",
                      json={"model_version": version})

    def set_model_version(self, project: int, version: str,
                          is_ours: Callable[[str], bool], retitle: bool = True) -> None:
        """Make ``version`` the project's current version so Data Manager shows its scores.

        Label Studio accepts a project version only if an ML backend connection is titled
        with it or predictions carry it. With ``retitle`` (no predictions of ``version`` yet)
        the connections of this backend (recognised by ``is_ours(title)``) are retitled
        first. The re-ranking job writes predictions first and does not retitle: while a
        connection's title equals the project's version, Label Studio clears that version on
        every prediction deletion.
        """
        with _calling(f"set model_version of project {project}"):
            if retitle:
                for ml_backend in self._client.ml.list(project=project):
                    if ml_backend.id is not None and is_ours(str(ml_backend.title or "")) \
                            and ml_backend.title != version:
                        # Label Studio 1.23 fails (500) on an update without url and project.
                        self._client.ml.update(id=ml_backend.id, title=version,
                                               url=ml_backend.url, project=project)
            self._client.projects.update(id=project, model_version=version)

    def model_version(self, project: int) -> str | None:
        with _calling(f"read project {project}"):
            return self._client.projects.get(id=project).model_version

    def _raw(self, method: str, path: str, **kwargs: Any) -> Any:
        """A call the SDK has no method for (the project's model-versions endpoint), through
        the SDK's own authenticated HTTP client (its only private attribute we touch), so
        tokens and their refresh stay in one place."""
        response = self._client._client_wrapper.httpx_client.request(path, method=method,
                                                                     **kwargs)
        response.raise_for_status()
        return response


@dataclass(frozen=True)
class TaskState:
    """A task's id and data, and the model version of each of its predictions."""

    id: int
    data: dict[str, Any]
    prediction_versions: tuple[str, ...]


def task_state(task: Any) -> TaskState:
    """From the SDK's task record (an object, or a dict in some versions)."""
    def field(item: Any, name: str) -> Any:
        return item.get(name) if isinstance(item, dict) else getattr(item, name, None)

    data = field(task, "data")
    versions = tuple(str(field(p, "model_version") or "")
                     for p in field(task, "predictions") or ())
    return TaskState(int(field(task, "id")), data if isinstance(data, dict) else {}, versions)


@contextmanager
def _calling(what: str, missing: str | None = None) -> Iterator[None]:
    """Any failure of the SDK or its HTTP client inside becomes one category for callers:
    LabelStudioUnavailable("cannot <what>: <status and body>"), or NotFound(``missing``)
    when that is given and Label Studio answered 404."""
    try:
        yield
    except (LabelStudioUnavailable, NotFound):
        raise
    except Exception as exc:  # SDK/httpx errors of many kinds, by version
        if missing is not None and getattr(exc, "status_code", None) == 404:
            raise NotFound(missing) from exc
        raise LabelStudioUnavailable(f"cannot {what}: {_short(exc)}") from exc


def _short(exc: Exception) -> str:
    """The SDK's API errors print every response header; keep status and body only."""
    status, body = getattr(exc, "status_code", None), getattr(exc, "body", None)
    if status is not None:
        return f"HTTP {status}: {str(body)[:300]}"
    return str(exc)[:300]
