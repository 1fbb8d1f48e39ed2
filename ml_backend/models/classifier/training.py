"""Training jobs for the classifier: sync labels from Label Studio, fit heads, save a version.

Two modes:
- ``incremental`` (after each annotation event): warm-started heads on cached embeddings with
  the regularisation chosen last time; seconds even with hundreds of labels.
- ``full`` (START_TRAINING, deletions, config changes): regularisation chosen by
  cross-validation and, with enough labels, a fine-tune of the backbone's last stage that is
  kept only if it improves cross-validated accuracy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml_backend.core.errors import BackendError, ImageError, LabelStudioUnavailable
from ml_backend.core.images import decode_image
from ml_backend.core.store import ModelVersion
from ml_backend.jobs.kinds import (
    EmbedRequest,
    JobName,
    QualityRequest,
    RerankRequest,
    TrainMode,
    TrainRequest,
    job_key,
)
from ml_backend.labelstudio.api import LabeledTask, labeled_tasks_from_export
from ml_backend.labelstudio.label_config import ControlSpec, ModelFamily, parse_label_config
from ml_backend.learning.heads import LinearHead, Regularisation, fit_head
from ml_backend.models.classifier.model import ResNetEmbedder, backbone_bytes, finetune_backbone
from ml_backend.runtime import Runtime

log = logging.getLogger(__name__)
LEDGER = "labels"
# Recompute label-quality scores and the find-similar index after each classifier training
# (proposed env var QUALITY_AFTER_TRAINING, default on; core/settings.py is not ours to edit).
QUALITY_AFTER_TRAINING = True


@dataclass(frozen=True)
class TrainOutcome:
    project: int
    status: str  # "trained" | "skipped" | "no-labels"
    version: str | None
    n_labeled: int
    seconds: float
    detail: str = ""
    phases: dict[str, float] = field(default_factory=dict)
    next_jobs: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()


def targets_for(control: ControlSpec, results: Sequence[list[dict[str, Any]]]
                ) -> tuple[list[int], np.ndarray]:
    """Rows that label ``control`` and their targets: class indices (single choice) or a 0/1
    matrix (multiple choice). Labels not in the control are ignored."""
    index = {label: i for i, label in enumerate(control.labels)}
    rows: list[int] = []
    targets: list[Any] = []
    for row, result in enumerate(results):
        chosen: list[str] = []
        for region in result:
            if region.get("from_name") == control.name and region.get("type") == "choices":
                chosen.extend(c for c in region.get("value", {}).get("choices", []) if c in index)
        if not chosen:
            continue
        rows.append(row)
        if control.multiple:
            vec = np.zeros(len(control.labels), dtype=np.float32)
            vec[[index[c] for c in chosen]] = 1.0
            targets.append(vec)
        else:
            targets.append(index[chosen[0]])
    if control.multiple:
        return rows, np.array(targets, dtype=np.float32).reshape(len(rows), len(control.labels))
    return rows, np.array(targets, dtype=np.int64)


def _sync_labels(runtime: Runtime, request: TrainRequest,
                 ledger_name: str = LEDGER) -> tuple[str, list[LabeledTask]]:
    """The project's label config and labeled tasks. Reads Label Studio's export unless the
    event carries the changed task and the last full read is recent enough. Each trainer
    keeps its own ledger (``ledger_name``): they run concurrently."""
    project = request.project
    ledger = runtime.store.read_state(project, ledger_name)
    fresh = (ledger is not None and not request.full
             and time.time() - ledger["synced_at"] < runtime.settings.full_sync_interval_s
             and isinstance(request.task, dict) and isinstance(request.annotation, dict))
    if isinstance(request.export, list):
        # Legacy POST /train: Label Studio sent every annotated task itself.
        tasks = {int(t["id"]): t for t in request.export if isinstance(t, dict) and "id" in t}
        config = request.label_config or (ledger or {}).get("label_config") or ""
        synced_at = time.time()
    elif fresh and ledger is not None:
        tasks = {int(k): v for k, v in ledger["tasks"].items()}
        task, annotation = dict(request.task or {}), dict(request.annotation or {})
        task_id = int(task["id"])
        known = tasks.get(task_id, {}).get("annotations", [])
        stored = next((a for a in known if a.get("id") == annotation.get("id")), None)
        # Events can arrive out of order: an older body never replaces a newer one.
        if stored is not None and str(stored.get("updated_at")) > str(
                annotation.get("updated_at")):
            annotation = stored
        merged = [a for a in known if a.get("id") != annotation.get("id")] + [annotation]
        tasks[task_id] = {"id": task_id, "data": task.get("data", {}), "annotations": merged}
        config = request.label_config or ledger["label_config"]
        synced_at = ledger["synced_at"]
    else:
        ls_api = runtime.label_studio("training")
        config = ls_api.label_config(project)
        exported = ls_api.labeled_tasks(project)
        tasks = {t.task_id: {"id": t.task_id, "data": t.data, "annotations": [
            {"id": t.annotation_id, "updated_at": t.updated_at, "result": t.result}]}
            for t in exported}
        synced_at = time.time()
    runtime.store.write_state(project, ledger_name, {
        "synced_at": synced_at, "label_config": config,
        "tasks": {str(k): v for k, v in tasks.items()}})
    return config, labeled_tasks_from_export(list(tasks.values()))


def rerank_next_job(project: int, force: bool = False) -> dict[str, Any]:
    """The re-ranking a job chains after it (``next_jobs`` in its result)."""
    return {"name": JobName.RERANK, "payload": RerankRequest(project, force).as_payload(),
            "key": job_key(JobName.RERANK, project)}


def quality_next_jobs(runtime: Runtime, project: int) -> list[dict[str, Any]]:
    """The label-quality job a classifier training chains after it, on its own lane (it reads
    Label Studio: none without its API, or with QUALITY_AFTER_TRAINING off)."""
    if not (QUALITY_AFTER_TRAINING and runtime.ls_api is not None):
        return []
    return [{"name": JobName.QUALITY, "payload": QualityRequest(project).as_payload(),
             "key": job_key(JobName.QUALITY, project)}]


def merge_train_requests(queued: TrainRequest, new: TrainRequest) -> TrainRequest:
    """Coalesce two train requests for one project into the one still queued: the stronger
    mode wins, and the event bodies are dropped so the job re-reads every label from Label
    Studio instead of applying only one of the events."""
    full = queued.full or new.full
    return TrainRequest(project=new.project,
                        mode=(TrainMode.FULL if full else TrainMode.INCREMENTAL).value,
                        label_config=new.label_config or queued.label_config,
                        export=new.export if isinstance(new.export, list) else None)


def _fingerprint(config: str, labeled: Sequence[LabeledTask], backbone: str) -> str:
    items = sorted((t.task_id, t.annotation_id, t.updated_at,
                    json.dumps(t.result, sort_keys=True)) for t in labeled)
    blob = json.dumps([config, backbone, items]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass(frozen=True)
class EncodedImages:
    """Tasks' images as fetched (still encoded): ``rows`` index the input tasks that had one."""

    rows: list[int]
    blobs: list[bytes]
    shas: list[str]

    def pixels(self, i: int, max_pixels: int) -> np.ndarray:
        return decode_image(self.blobs[i], max_pixels, source=f"row {self.rows[i]}")


def fetch_images(runtime: Runtime, labeled: Sequence[LabeledTask], value_key: str
                  ) -> EncodedImages:
    """Fetch (from the image cache, usually) without decoding; skip tasks whose image fails."""
    def fetch(task: LabeledTask) -> tuple[bytes, str] | None:
        url = task.data.get(value_key)
        if not isinstance(url, str):
            return None
        try:
            return runtime.images.load_bytes(url, task_id=task.task_id)
        except (ImageError, LabelStudioUnavailable) as exc:
            log.warning("training: skipping task %s: %s", task.task_id, exc)
            return None

    with ThreadPoolExecutor(max_workers=8) as pool:
        fetched = list(pool.map(fetch, labeled))
    rows = [i for i, item in enumerate(fetched) if item is not None]
    return EncodedImages(rows, [fetched[i][0] for i in rows],  # type: ignore[index]
                         [fetched[i][1] for i in rows])  # type: ignore[index]


def embed_images(runtime: Runtime, embedder: ResNetEmbedder, images: EncodedImages
           ) -> tuple[list[int], np.ndarray]:
    """Embeddings of the fetched images, decoding only those not cached; an image that fails
    to decode drops its row."""
    cached = embedder.cache.get_many(embedder.digest, images.shas)
    decoded: dict[int, np.ndarray] = {}
    good: list[int] = []
    for i, sha in enumerate(images.shas):
        if sha not in cached:
            try:
                decoded[i] = images.pixels(i, runtime.settings.max_image_pixels)
            except ImageError as exc:
                log.warning("training: skipping row %s: %s", images.rows[i], exc)
                continue
        good.append(i)
    vectors = embedder.embed([images.shas[i] for i in good], lambda j: decoded[good[j]],
                             cached=cached)
    return [images.rows[i] for i in good], vectors


def train_classifier(runtime: Runtime, request: TrainRequest) -> TrainOutcome:
    """Job entry: update the project's classifier from its labels (see TrainRequest)."""
    started = time.perf_counter()
    project = request.project
    full = request.full
    phases: dict[str, float] = {}

    def mark(phase: str) -> None:
        phases[phase] = round(time.perf_counter() - started, 3)  # seconds since the start

    with runtime.store.locked(project):
        mark("lock")
        config, labeled = _sync_labels(runtime, request)
        mark("sync")
        try:
            controls = parse_label_config(config).for_family(ModelFamily.CLASSIFIER)
        except BackendError as exc:
            return TrainOutcome(project, "skipped", None, len(labeled),
                                time.perf_counter() - started, str(exc))
        previous = runtime.store.latest(project)
        # Incremental updates keep the current version's backbone (base or fine-tuned); a
        # full run starts again from the base weights and may fine-tune them.
        embedder = runtime.classifier.embedder(None if full else previous)
        if (not full and previous is not None and previous.manifest.get("fingerprint")
                == _fingerprint(config, labeled, embedder.digest)):
            return TrainOutcome(project, "skipped", previous.name, len(labeled),
                                time.perf_counter() - started, "nothing changed")
        previous_heads = runtime.classifier.model(project).heads if previous is not None else {}

        data: list[tuple[ControlSpec, np.ndarray, EncodedImages, list[int]]] = []
        for control in controls:
            rows, y = targets_for(control, [t.result for t in labeled])
            if rows:
                subset = [labeled[r] for r in rows]
                data.append((control, y, fetch_images(runtime, subset, control.value_key),
                             [t.task_id for t in subset]))
        mark("fetch")
        files: dict[str, bytes] = {}
        backbone_meta: dict[str, Any] = {}
        settings = runtime.settings
        if full and settings.finetune_epochs > 0:
            eligible = [d for d in data if not d[0].multiple
                        and len(d[1]) >= settings.finetune_min_labels]
            if eligible:
                embedder, backbone_meta = _finetune_if_better(runtime, embedder, *eligible[0],
                                                              files)
                mark("finetune")
        elif previous is not None and previous.manifest.get("backbone", {}).get("file"):
            backbone_meta = dict(previous.manifest["backbone"])
            files[backbone_meta["file"]] = previous.read_bytes(backbone_meta["file"])

        heads: dict[str, LinearHead] = {}
        for control, y, images, _ in data:
            image_rows, x = embed_images(runtime, embedder, images)
            if not image_rows:
                continue
            previous_head = previous_heads.get(control.name)
            reused = _reusable_regularisation(previous_head, len(image_rows)) \
                if not full else None
            heads[control.name] = fit_head(x, y[image_rows], control.labels, control.multiple,
                                           regularisation=reused, previous=previous_head)
        mark("fit")
        if not heads:
            return TrainOutcome(project, "no-labels", previous.name if previous else None,
                                len(labeled), time.perf_counter() - started,
                                "no usable labels for any classification control")
        head_meta = {}
        for name, head in heads.items():
            file_name = f"head-{hashlib.sha256(name.encode()).hexdigest()[:12]}.npz"
            files[file_name] = head.to_bytes()
            head_meta[name] = {"file": file_name, "labels": list(head.labels),
                               "multiple": head.multiple, **head.stats}
        weights = runtime.classifier.base_weights()
        detector_files, carried = carry_over(previous, exclude="classifier")
        files.update(detector_files)
        version = runtime.store.save(project, settings.resnet_arch, files, {
            **carried,
            "family": ModelFamily.CLASSIFIER.value, "mode": "full" if full else "incremental",
            "fingerprint": _fingerprint(config, labeled, embedder.digest),
            "n_labeled": len(labeled), "heads": head_meta,
            "base_weights": {"source": weights.source, "digest": weights.digest},
            "backbone": backbone_meta,
        })
    mark("saved")
    outcome = TrainOutcome(project, "trained", version.name, len(labeled),
                           time.perf_counter() - started, phases=phases,
                           next_jobs=after_new_version(runtime, project, version.name)
                           + quality_next_jobs(runtime, project))
    log.info("training done: %s", outcome.as_dict())
    return outcome


def carry_over(version: ModelVersion | None, exclude: str
               ) -> tuple[dict[str, bytes], dict[str, Any]]:
    """The files and manifest entries of ``version`` that belong to the other model family
    (``exclude`` names the family being replaced: ``detector`` or ``classifier``), so a
    project with both keeps each family's latest model in every version."""
    if version is None:
        return {}, {}
    manifest = version.manifest
    if exclude == "detector":
        keys = ["heads", "backbone", "fingerprint", "base_weights", "n_labeled"]
        names = [h["file"] for h in (manifest.get("heads") or {}).values()]
        if (manifest.get("backbone") or {}).get("file"):
            names.append(manifest["backbone"]["file"])
    else:
        keys = ["detector"]
        names = [manifest["detector"]["file"]] if manifest.get("detector") else []
    entries = {k: manifest[k] for k in keys if k in manifest}
    return {name: version.read_bytes(name) for name in names}, entries



def _reusable_regularisation(previous: LinearHead | None, n: int) -> Regularisation | None:
    """The regularisation an incremental update reuses, or None to choose it again: the
    first time, and whenever the labels have doubled since (a strength chosen on 20 labels
    over-regularises 500). The baseline's rule (``1/n``) is reused as a rule."""
    if previous is None:
        return None
    chosen_at = previous.stats.get("l2_chosen_at_n", 0.0)
    return previous.regularisation() if chosen_at > 0 and n < 2 * chosen_at else None


def _holdout(task_ids: list[int]) -> np.ndarray:
    """A validation split fixed by task id (stable across rounds): about one task in five."""
    return np.array([int(hashlib.sha256(str(t).encode()).hexdigest(), 16) % 5 == 0
                     for t in task_ids], dtype=bool)


def _finetune_if_better(runtime: Runtime, base: ResNetEmbedder, control: ControlSpec,
                        y: np.ndarray, images: EncodedImages, task_ids: list[int],
                        files: dict[str, bytes]) -> tuple[ResNetEmbedder, dict[str, Any]]:
    """Fine-tune the base backbone's last stage on ``control`` and keep it only if a head on
    its embeddings beats a head on the frozen ones on held-out tasks never used for tuning."""
    settings = runtime.settings
    image_rows, frozen = embed_images(runtime, base, images)
    y = y[image_rows]
    val = _holdout([task_ids[r] for r in image_rows])
    report: dict[str, Any] = {"control": control.name, "n_train": int((~val).sum()),
                              "n_val": int(val.sum())}
    if val.sum() < 10 or len(np.unique(y[~val])) < 2:
        report.update(kept=False, reason="too few labels for a held-out comparison")
        return base, {"finetune": report}
    train_idx = np.flatnonzero(~val)[:settings.finetune_max_images]
    by_row = {row: i for i, row in enumerate(images.rows)}

    def pixels(position: int) -> np.ndarray:
        return images.pixels(by_row[image_rows[position]], settings.max_image_pixels)

    tuned = finetune_backbone(base.backbone, [pixels(int(i)) for i in train_idx],
                              y[train_idx], len(control.labels), settings.classifier_image_size,
                              settings.finetune_epochs, runtime.device)
    data = backbone_bytes(tuned)
    digest = hashlib.sha256(data).hexdigest()[:16]
    tuned_embedder = ResNetEmbedder(tuned, digest, settings.classifier_image_size,
                                    runtime.device, runtime.classifier.embedding_cache)
    shas = [images.shas[by_row[row]] for row in image_rows]
    tuned_x = tuned_embedder.embed(shas, pixels)

    def val_accuracy(x: np.ndarray) -> float:
        head = fit_head(x[~val], y[~val], control.labels, False, calibrate=False)
        return float((head.predict_proba(x[val]).argmax(axis=1) == y[val]).mean())

    before, after = val_accuracy(frozen), val_accuracy(tuned_x)
    log.info("backbone fine-tune on '%s': held-out accuracy %.3f -> %.3f", control.name,
             before, after)
    report.update(val_accuracy_frozen=before, val_accuracy_tuned=after, kept=after > before)
    if after <= before:
        return base, {"finetune": report}
    files["backbone.pt"] = data
    return tuned_embedder, {"file": "backbone.pt", "digest": digest, "finetune": report}


def after_new_version(runtime: Runtime, project: int, version: str) -> list[dict[str, Any]]:
    """What follows a saved version: the re-rank job (returned as a follow-up), which
    announces the version once its predictions are written, so Data Manager never shows a
    version whose scores are not there yet; without re-ranking, the announcement now."""
    if runtime.settings.rerank_after_training and runtime.ls_api is not None:
        return [rerank_next_job(project)]
    runtime.announce(project, version)
    return []


def precompute_embeddings(runtime: Runtime, request: EmbedRequest) -> dict[str, Any]:
    """Job: embed new tasks' images ahead of time so the first /predict is fast."""
    tasks = request.tasks
    config = request.label_config
    controls = parse_label_config(config).for_family(ModelFamily.CLASSIFIER)
    keys = {c.value_key for c in controls}
    fake = [LabeledTask(int(t["id"]), t.get("data", {}), 0, "", []) for t in tasks
            if isinstance(t, dict) and "id" in t]
    project = request.project
    embedder = runtime.classifier.embedder(runtime.store.latest(project))
    done = 0
    for key in keys:
        rows, _ = embed_images(runtime, embedder, fetch_images(runtime, fake, key))
        done += len(rows)
    result: dict[str, Any] = {"embedded": done}
    # New tasks take their place in the queue: by the model's uncertainty, or before the
    # first head (classification projects) in the cold-start coverage order.
    if (request.rerank and runtime.settings.rerank_after_training
            and runtime.ls_api is not None
            and (controls or runtime.store.latest(project) is not None)):
        result["next_jobs"] = [rerank_next_job(project, force=True)]
    return result

