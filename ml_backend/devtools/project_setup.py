"""Scripted Label Studio project setup with ``label_studio_sdk`` 2.x.

Each function does one step of the active-learning workflow: create a project, upload
images, connect the ML backend, ask it for predictions, add the "most informative first",
"Suspected label errors" and "Near-duplicates" Data Manager views and export annotations.
``scripts/setup_project.py`` and ``scripts/demo.py`` chain them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests

from ml_backend.labelstudio.auth import LabelStudioAuth
from ml_backend.labelstudio.data_manager import default_hidden_columns
from ml_backend.quality.views import (
    DUPLICATES_VIEW,
    LABEL_ERRORS_VIEW,
    duplicates_view,
    label_errors_view,
)

if TYPE_CHECKING:
    from label_studio_sdk import LabelStudio

__all__ = [
    "INFORMATIVE_VIEW_TITLE",
    "backend_setup",
    "connect_backend",
    "create_informative_view",
    "create_project",
    "ensure_duplicates_view",
    "ensure_label_errors_view",
    "ensure_view",
    "export_annotations",
    "label_studio_auth_header",
    "retrieve_predictions",
    "upload_images",
]

log = logging.getLogger(__name__)

INFORMATIVE_VIEW_TITLE = "Most informative first"
UPLOAD_BATCH = 50  # Label Studio refuses more than DATA_UPLOAD_MAX_NUMBER_FILES (100) files
_IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
                ".gif": "image/gif", ".bmp": "image/bmp", ".webp": "image/webp"}


def _content_type(path: Path) -> str:
    return _IMAGE_TYPES.get(path.suffix.lower(), "application/octet-stream")


def label_studio_auth_header(ls_url: str, api_key: str, timeout: float = 10.0) -> dict[str, str]:
    """``Authorization`` header for raw requests (legacy key or personal access token)."""
    return LabelStudioAuth(ls_url, api_key, requests.Session(), timeout_s=timeout).headers()


def create_project(
    client: LabelStudio, title: str, label_config_path: str | Path, **options: Any
) -> int:
    """Create a project with the label config read from ``label_config_path``; return its id.

    ``options`` go to ``projects.create`` (e.g. ``description``). ``sampling`` defaults to
    uncertainty sampling, so Label Studio's own "Label All Tasks" stream also serves the
    lowest prediction score (the top of the backend's queue) first.
    """
    label_config = Path(label_config_path).read_text(encoding="utf-8")
    options.setdefault("sampling", "Uncertainty sampling")
    project = client.projects.create(title=title, label_config=label_config, **options)
    if project.id is None:
        raise RuntimeError("Label Studio returned a project without id")
    return int(project.id)


def upload_images(
    ls_url: str,
    api_key: str,
    project_id: int,
    paths: Sequence[str | Path],
    batch_size: int = UPLOAD_BATCH,
    timeout: float = 120.0,
) -> list[int]:
    """Upload image files as tasks (``POST /api/projects/<id>/import``, multipart).

    One form field per file (unique field names: Label Studio keeps one file per name), in
    batches of ``batch_size``. Returns the created task ids in upload order.
    """
    url = f"{ls_url.rstrip('/')}/api/projects/{project_id}/import"
    headers = label_studio_auth_header(ls_url, api_key)
    task_ids: list[int] = []
    for start in range(0, len(paths), batch_size):
        batch = [Path(p) for p in paths[start : start + batch_size]]
        handles = [path.open("rb") for path in batch]
        try:
            files = [
                (f"file{start + i}_{path.name}", (path.name, handle, _content_type(path)))
                for i, (path, handle) in enumerate(zip(batch, handles, strict=True))
            ]
            response = requests.post(
                url, params={"return_task_ids": "true"}, files=files, headers=headers,
                timeout=timeout,
            )
        finally:
            for handle in handles:
                handle.close()
        if response.status_code >= 400:
            raise RuntimeError(
                f"upload to project {project_id} failed: "
                f"{response.status_code} {response.text[:500]}"
            )
        body = response.json()
        if "task_ids" not in body:
            raise RuntimeError(f"import returned no task ids (asynchronous import?): {body}")
        task_ids.extend(int(task_id) for task_id in body["task_ids"])
    return task_ids


def backend_setup(
    backend_url: str,
    project_key: str,
    label_config: str,
    auth: tuple[str, str] | None = None,
    timeout: float = 10.0,
) -> str:
    """Call ``POST {backend}/setup`` as Label Studio does; return its ``model_version``."""
    response = requests.post(
        f"{backend_url.rstrip('/')}/setup",
        json={"project": project_key, "schema": label_config},
        auth=auth,
        timeout=timeout,
    )
    response.raise_for_status()
    return str(response.json()["model_version"])


def register_webhook(client: LabelStudio, project_id: int, backend_url: str,
                     secret: str) -> int:
    """A project webhook to ``<backend>/webhook`` for every event, with payload, carrying
    ``secret`` in the header the backend checks when WEBHOOK_SECRET is set."""
    from ml_backend.core.settings import WEBHOOK_SECRET_HEADER

    hook = client.webhooks.create(url=f"{backend_url.rstrip('/')}/webhook", project=project_id,
                                  send_payload=True, send_for_all_actions=True,
                                  headers={WEBHOOK_SECRET_HEADER: secret})
    if hook.id is None:
        raise RuntimeError("Label Studio returned a webhook without id")
    return int(hook.id)


def connect_backend(
    client: LabelStudio,
    project_id: int,
    backend_url: str,
    title: str | None = None,
    is_interactive: bool = True,
    basic_auth: tuple[str, str] | None = None,
) -> int:
    """Register the ML backend on the project; return the ML backend id.

    The connection is titled with the backend's current ``model_version`` (from its
    ``/setup``), and the project's ``model_version`` is set to it: Label Studio only accepts a
    project model version that names a connected backend or existing predictions, and the
    Data Manager only shows scores of predictions whose version matches the project's.
    A ``title`` given explicitly is used as the connection's description.
    """
    project = client.projects.get(id=project_id)
    created = getattr(project, "created_at", None)
    stamp = int(created.timestamp()) if created is not None else 0
    version = backend_setup(
        backend_url, f"{project_id}.{stamp}", project.label_config or "", auth=basic_auth
    )
    options: dict[str, Any] = {}
    if basic_auth is not None:
        options.update(
            auth_method="BASIC_AUTH", basic_auth_user=basic_auth[0], basic_auth_pass=basic_auth[1]
        )
    if title:
        options["description"] = title
    backend = client.ml.create(
        project=project_id, url=backend_url, is_interactive=is_interactive, title=version, **options
    )
    client.projects.update(id=project_id, model_version=version)
    if backend.id is None:
        raise RuntimeError("Label Studio returned an ML backend without id")
    return int(backend.id)


def retrieve_predictions(
    client: LabelStudio,
    project_id: int,
    task_ids: Sequence[int] | None = None,
    timeout: float = 300.0,
) -> None:
    """Run the Data Manager action "Retrieve predictions" on all tasks or on ``task_ids``.

    Label Studio sends the selected tasks to the backend's ``/predict`` in ONE request and
    stores the results; the call blocks until then (``timeout`` seconds at most).
    """
    selected: dict[str, Any] = (
        {"all": True, "excluded": []} if task_ids is None
        else {"all": False, "included": [int(t) for t in task_ids]}
    )
    client.actions.create(
        id="retrieve_tasks_predictions",
        project=project_id,
        selected_items=selected,  # type: ignore[arg-type]
        request_options={"timeout": timeout},
    )


def create_informative_view(
    client: LabelStudio, project_id: int, title: str = INFORMATIVE_VIEW_TITLE
) -> int:
    """Add a Data Manager tab: unlabeled tasks, lowest prediction score (least sure) first."""
    data = {
        "title": title,
        "filters": {
            "conjunction": "and",
            "items": [
                {
                    "filter": "filter:tasks:total_annotations",
                    "operator": "equal",
                    "type": "Number",
                    "value": 0,
                }
            ],
        },
        "ordering": ["tasks:predictions_score"],
    }
    view = client.views.create(project=project_id, data=data)  # type: ignore[arg-type]
    if view.id is None:
        raise RuntimeError("Label Studio returned a view without id")
    return int(view.id)


def ensure_view(client: LabelStudio, project_id: int, title: str, data: dict[str, Any]) -> int:
    """The id of the project's Data Manager tab titled ``title``, created with ``data``
    (filters, ordering) when there is none: a re-run, or the backend's quality job (which
    looks the tab up by title the same way), never adds a second one. A new tab hides the
    columns a tab made in the UI hides (:func:`default_hidden_columns`)."""
    for view in client.views.list(project=project_id):
        view_data = getattr(view, "data", None) or {}
        if isinstance(view_data, dict) and view_data.get("title") == title \
                and view.id is not None:
            return int(view.id)
    data = {"title": title, **data}
    try:  # no SDK method for the columns: the SDK's own authenticated HTTP client
        response = client._client_wrapper.httpx_client.request(
            "api/dm/columns", method="GET", params={"project": project_id})
        response.raise_for_status()
        data["hiddenColumns"] = default_hidden_columns(response.json(), data)
    except Exception as exc:  # display only: the tab still works with every column
        log.warning("project %s: tab %r gets every column (cannot read the Data Manager "
                    "columns: %s)", project_id, title, str(exc)[:300])
    view = client.views.create(project=project_id, data=data)  # type: ignore[arg-type]
    if view.id is None:
        raise RuntimeError("Label Studio returned a view without id")
    return int(view.id)


def ensure_label_errors_view(client: LabelStudio, project_id: int) -> int:
    """The "Suspected label errors" tab: annotated tasks, worst label quality first (empty
    until the backend's quality job has scored the labels after a training)."""
    return ensure_view(client, project_id, LABEL_ERRORS_VIEW, label_errors_view())


def ensure_duplicates_view(client: LabelStudio, project_id: int) -> int:
    """The "Near-duplicates" tab: tasks marked as a near-duplicate of another (empty until
    ``ml-backend dedupe --apply`` has marked some)."""
    return ensure_view(client, project_id, DUPLICATES_VIEW, duplicates_view())


def export_annotations(
    client: LabelStudio,
    project_id: int,
    export_type: str = "JSON",
    out_path: str | Path = "export.json",
    download_all_tasks: bool = True,
) -> Path:
    """Download an export (``JSON``, ``COCO``, ``YOLO``, …) to ``out_path``; return the path."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    chunks = client.projects.exports.download_sync(
        project_id, export_type=export_type, download_all_tasks=download_all_tasks
    )
    with out.open("wb") as handle:
        for chunk in chunks:
            handle.write(chunk)
    return out
