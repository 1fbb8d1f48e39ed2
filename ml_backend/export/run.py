"""One export from start to end: read the project's human labels through the SDK, fetch
each image through the backend's one image loader, split, write the format, augment the
train split, and write the balance report next to the data.

Images are read twice (hash and size first, then again to write), so a big project's images
never sit in memory together: the loader's disk cache makes the second read cheap for
remote images, and a local file is just read again.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ml_backend.core.errors import BadRequest, ImageError, LabelStudioUnavailable
from ml_backend.core.store import RANKING_STATE
from ml_backend.export.augment import augmented_copies, train_transform
from ml_backend.export.balance import (
    MIN_CLASS_SHARE,
    ItemStats,
    QueueView,
    balance_report,
    plot_balance,
)
from ml_backend.export.dataset import (
    SPLITS,
    ExportFormat,
    ExportItem,
    ExportSpec,
    OutputNotEmpty,
    Split,
    TaskLabels,
    export_spec,
    human_annotation,
    instances_of,
    task_labels,
)
from ml_backend.export.splits import assign_splits, dhash, parse_ratios, split_candidates
from ml_backend.export.writers import WRITERS
from ml_backend.labelstudio.label_config import parse_label_config
from ml_backend.reporting.regions import parse_regions

if TYPE_CHECKING:
    from ml_backend.jobs.kinds import ExportRequest
    from ml_backend.runtime import Runtime

# The split of every task ever exported, per project, in the model store's state folder
# (MODEL_DIR/projects/<id>/state/export-splits.json). Not in the export folder: a re-export
# to a new --out (or by the server for the CLI's export) must find the same assignment, and
# the store is the per-project state that the server, its workers and the CLI already share.
SPLITS_STATE = "export-splits"
MANIFEST = "export.json"  # marks a folder this code wrote (the only kind --overwrite clears)
Progress = Callable[[int, int, str], None]
_SUFFIXES = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp",
             "TIFF": ".tif"}


class ProjectSource(Protocol):
    """Where the labels come from (``labelstudio.api.LabelStudioAPI``)."""

    def existing_label_config(self, project: int) -> str: ...
    def all_tasks_export(self, project: int) -> list[dict[str, Any]]: ...
    def prediction_records(self, project: int) -> dict[int, list[dict[str, Any]]]: ...


class ImageSource(Protocol):
    """Where images come from (``core.images.ImageLoader``, the backend's one fetcher)."""

    def load_bytes(self, url: str, task_id: int | None = None) -> tuple[bytes, str]: ...
    def decode(self, data: bytes, url: str) -> np.ndarray: ...


class StateStore(Protocol):
    """Per-project JSON state (``core.store.ModelStore``)."""

    def read_state(self, project: int, name: str) -> dict[str, Any] | None: ...
    def write_state(self, project: int, name: str, state: Mapping[str, Any]) -> None: ...


@dataclass(frozen=True)
class ExportOptions:
    project: int
    format: ExportFormat
    out_dir: Path
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    augment: int = 0
    seed: int = 0
    overwrite: bool = False
    min_share: float = MIN_CLASS_SHARE

    @classmethod
    def parse(cls, project: Any, fmt: Any, out_dir: Any, split: Any = "0.8/0.1/0.1",
              augment: Any = 0, seed: Any = 0, overwrite: Any = False) -> ExportOptions:
        """Options from strings or JSON values; BadRequest says what is wrong."""
        try:
            if isinstance(project, bool) or not isinstance(project, int) or project < 0:
                raise ValueError(f"project must be a non-negative integer id, got {project!r}")
            for name, value in (("augment", augment), ("seed", seed)):
                if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                    raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
            if not isinstance(overwrite, bool):
                raise ValueError(f"overwrite must be true or false, got {overwrite!r}")
            if not isinstance(out_dir, str | Path) or not str(out_dir).strip():
                raise ValueError("out must name a folder")
            return cls(project, ExportFormat.parse(fmt), Path(out_dir), parse_ratios(split),
                       augment, seed, overwrite)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None


EXPORT_FIELDS = ("format", "out", "split", "augment", "seed", "overwrite")


def options_from_body(project: int, body: Any, exports_root: Path) -> ExportOptions:
    """``POST /export/<project>``'s JSON body as options. ``out`` is a relative folder
    under ``exports_root`` (default ``project-<id>-<format>``): a request never names a
    path of the server's own choosing outside it."""
    if not isinstance(body, Mapping):
        raise BadRequest(f"/export body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - set(EXPORT_FIELDS))
    if unknown:
        raise BadRequest(f"unknown /export fields {unknown}; known: {list(EXPORT_FIELDS)}")
    if "format" not in body:
        raise BadRequest("/export needs 'format': one of "
                         + ", ".join(f.value for f in ExportFormat))
    out = body.get("out") or f"project-{project}-{body['format']}"
    relative = Path(str(out))
    if not isinstance(out, str) or relative.is_absolute() or ".." in relative.parts:
        raise BadRequest(f"/export 'out' must be a relative folder name without '..' (it is "
                         f"created under {exports_root}), got {out!r}")
    split = body.get("split", "0.8/0.1/0.1")
    return ExportOptions.parse(project, body["format"], exports_root / relative, split,
                               body.get("augment", 0), body.get("seed", 0),
                               body.get("overwrite", False))


def check_output(out_dir: Path, overwrite: bool) -> None:
    """Refuse a folder that exists with files in it, unless ``overwrite`` and it holds an
    earlier export (its :data:`MANIFEST`): never delete a folder this code did not write."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise OutputNotEmpty(f"{out_dir} exists and is not a folder")
    if not any(out_dir.iterdir()):
        return
    if not overwrite:
        raise OutputNotEmpty(f"{out_dir} exists and is not empty; pass --overwrite "
                             "(\"overwrite\": true) to replace an earlier export there")
    if not (out_dir / MANIFEST).is_file():
        raise OutputNotEmpty(f"{out_dir} is not empty and holds no earlier export ({MANIFEST});"
                             " refusing to delete it: choose an empty or new folder")


def project_spec(source: ProjectSource, project: int, fmt: ExportFormat) -> ExportSpec:
    """The project's export spec for ``fmt``: NotFound for an unknown project,
    NothingToExport (422) when its label config has nothing ``fmt`` can be written from."""
    return export_spec(parse_label_config(source.existing_label_config(project)), fmt)


@dataclass
class _Scanned:
    """Pass 1's record of a task whose image loaded."""

    labels: TaskLabels
    width: int
    height: int
    suffix: str
    dhash: int


@dataclass
class ExportOutcome:
    project: int
    format: str
    out_dir: str
    classes: list[str]
    written: dict[str, int]
    augmented: dict[str, int]
    report: dict[str, Any] = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["warnings"] = [w["message"] for w in self.report["warnings"]]
        del out["report"]
        out["report_json"] = str(Path(self.out_dir) / "report.json")
        out["report_png"] = str(Path(self.out_dir) / "report.png")
        return out


def image_suffix(data: bytes) -> str | None:
    """The file suffix of an image's own format, None when it is not one to keep as is."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return _SUFFIXES.get(str(image.format))
    except (UnidentifiedImageError, OSError):
        return None


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def export_project(source: ProjectSource, images: ImageSource, store: StateStore,
                   options: ExportOptions, progress: Progress | None = None) -> ExportOutcome:
    """Export ``options.project`` to ``options.out_dir``. Raises NotFound, NothingToExport,
    OutputNotEmpty or LabelStudioUnavailable before anything is written."""
    report_progress: Progress = progress or (lambda done, total, stage: None)
    spec = project_spec(source, options.project, options.format)
    check_output(options.out_dir, options.overwrite)
    tasks = source.all_tasks_export(options.project)
    counts = task_labels(tasks, spec)
    unusable = dict(counts.unusable)

    scanned: list[_Scanned] = []
    for done, labels in enumerate(counts.labeled):
        report_progress(done, len(counts.labeled), "reading images")
        try:
            data, _ = images.load_bytes(labels.image_url, task_id=labels.task_id)
            pixels = images.decode(data, labels.image_url)
        except (ImageError, LabelStudioUnavailable) as exc:
            unusable[labels.task_id] = f"image: {exc}"
            continue
        scanned.append(_Scanned(labels, pixels.shape[1], pixels.shape[0],
                                image_suffix(data) or "", dhash(pixels)))

    previous_state = store.read_state(options.project, SPLITS_STATE) or {}
    previous = {int(k): Split(v) for k, v in (previous_state.get("tasks") or {}).items()}
    candidates = split_candidates([s.labels.task_id for s in scanned],
                                  [s.labels.class_names() for s in scanned],
                                  [s.dhash for s in scanned])
    assignment = assign_splits(candidates, options.split, options.seed, previous)
    # Tasks no longer exported keep their entry: relabeled later, they return to their split.
    store.write_state(options.project, SPLITS_STATE, {"tasks": {
        str(k): v.value for k, v in sorted({**previous, **assignment}.items())}})

    if options.out_dir.exists() and options.overwrite:
        shutil.rmtree(options.out_dir)
    options.out_dir.mkdir(parents=True, exist_ok=True)
    stats: list[ItemStats] = []
    augmented = dict.fromkeys((s.value for s in SPLITS), 0)
    transform = train_transform() if options.augment else None

    def items() -> Iterator[tuple[Split, ExportItem]]:
        for done, record in enumerate(scanned):
            report_progress(done, len(scanned), "writing")
            labels, split = record.labels, assignment[record.labels.task_id]
            try:
                data, _ = images.load_bytes(labels.image_url, task_id=labels.task_id)
                needs_pixels = not record.suffix or (transform and split is Split.TRAIN)
                pixels = images.decode(data, labels.image_url) if needs_pixels else None
            except (ImageError, LabelStudioUnavailable) as exc:  # gone since pass 1
                unusable[labels.task_id] = f"image: {exc}"
                continue
            suffix = record.suffix
            if not suffix and pixels is not None:  # a format kept as PNG
                data, suffix = _png(pixels), ".png"
            instances = instances_of(labels, spec.classes, record.width, record.height)
            class_id = spec.classes.index(labels.class_name) if labels.class_name else None
            item = ExportItem(labels.task_id, data, suffix, record.width, record.height,
                              instances, class_id)
            stats.append(ItemStats(
                labels.task_id, split, record.width, record.height,
                tuple(int(c) for c in instances.class_ids),
                tuple((float(b[2] - b[0]), float(b[3] - b[1])) for b in instances.xyxy),
                class_id))
            yield split, item
            if transform is not None and split is Split.TRAIN and pixels is not None:
                for copy in augmented_copies(item, pixels, options.augment, options.seed,
                                             transform):
                    augmented[split.value] += 1
                    yield split, copy
        report_progress(len(scanned), len(scanned), "writing")

    written = WRITERS[options.format](options.out_dir, items(), spec.classes)
    left_out = {"skipped_tasks": counts.skipped, "unannotated_tasks": counts.unannotated,
                "left_out_tasks": {str(k): v for k, v in sorted(unusable.items())}}
    by_instances = options.format is not ExportFormat.IMAGEFOLDER
    report = balance_report(stats, spec.classes, by_instances=by_instances,
                            augmented=augmented, left_out=left_out, min_share=options.min_share)
    if report["warnings"]:  # only then is the queue worth a request for every prediction
        queue = queue_view(source, store, options.project, spec, tasks)
        report = balance_report(stats, spec.classes, by_instances=by_instances,
                                augmented=augmented, left_out=left_out, queue=queue,
                                min_share=options.min_share)
    report = {"project": options.project, "format": options.format.value, **report}
    (options.out_dir / "report.json").write_text(json.dumps(report, indent=1))
    plot_balance(report, str(options.out_dir / "report.png"),
                 f"project {options.project}: {options.format.value} export")
    outcome = ExportOutcome(options.project, options.format.value, str(options.out_dir),
                            list(spec.classes), written, augmented, report)
    manifest = {**outcome.as_dict(), "split_ratios": list(options.split),
                "seed": options.seed, "augment": options.augment,
                "splits": {s.value: sorted(t.task_id for t in stats if t.split is s)
                           for s in SPLITS}}
    (options.out_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return outcome


def queue_view(source: ProjectSource, store: StateStore, project: int, spec: ExportSpec,
               tasks: Sequence[Mapping[str, Any]]) -> QueueView:
    """The unlabeled (and not skipped) tasks in the order of the project's ranked queue
    (the re-rank's saved order, then the rest by id) and the classes their latest
    prediction shows for the exported controls."""
    unlabeled = sorted(int(t["id"]) for t in tasks if isinstance(t.get("id"), int)
                       and not t.get("annotations"))
    state = store.read_state(project, RANKING_STATE) or {}
    ranked = [int(row["task"]) for row in state.get("top") or [] if "task" in row]
    waiting = set(unlabeled)
    order = [t for t in ranked if t in waiting]
    order += [t for t in unlabeled if t not in set(order)]
    source_name = (f"ranked queue (model {state.get('version')})" if ranked
                   else "task order (the project has not been ranked yet)")
    controls = {*spec.box_controls, *spec.mask_controls,
                *([spec.class_control] if spec.class_control else [])}
    predicted: dict[int, set[str]] = {}
    for task, records in source.prediction_records(project).items():
        if task not in waiting or not records:
            continue
        latest = max(records, key=lambda r: (str(r.get("created_at") or ""),
                                             int(r.get("id") or 0)))
        regions = parse_regions(latest.get("result") or [])
        names = {label for name in controls for r in regions.get(name, [])
                 for label in r.labels if label in spec.classes}
        if names:
            predicted[task] = names
    return QueueView(order, predicted, source_name)


def export_job(runtime: Runtime, request: ExportRequest) -> dict[str, Any]:
    """The ``export`` background job; its progress shows in ``/jobs``."""
    from ml_backend.jobs.queues import report_progress

    options = ExportOptions.parse(request.project, request.format, request.out_dir,
                                  request.split, request.augment, request.seed,
                                  request.overwrite)
    api = runtime.label_studio("export")
    return export_project(api, runtime.images, runtime.store, options,
                          progress=report_progress).as_dict()


__all__ = ["EXPORT_FIELDS", "MANIFEST", "SPLITS_STATE", "ExportOptions", "ExportOutcome",
           "check_output", "export_job", "export_project", "human_annotation",
           "options_from_body", "project_spec", "queue_view"]
