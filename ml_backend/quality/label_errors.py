"""The ``quality`` job: suspected label errors of a project, written to Label Studio, and the
project's find-similar index.

After each classifier or detector training (never on a request):

- classification: every annotated task's label is scored by cleanlab from out-of-fold
  probabilities of the production learner (the head the classifier trains, with the
  regularisation the current version chose, cross-validated on the cached embeddings of the
  current backbone);
- detection: each annotated task the current detector did not train on (its held-out split,
  and tasks annotated since) is scored by cleanlab's ObjectLab from that detector's boxes
  (:mod:`ml_backend.quality.detection_errors`), their confidences first mapped through the
  version's held-out calibration (:mod:`ml_backend.models.detector.calibration`).

The score goes into the task's ``data`` (see :mod:`ml_backend.quality.views`, which also says
why there; a task scored both ways keeps the lower score) and the "Suspected label errors"
tab lists annotated tasks lowest score first.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml_backend.core.detections import Detections, LabeledBoxes
from ml_backend.core.errors import ModelUnavailable
from ml_backend.core.images import decode_image
from ml_backend.core.store import ModelVersion
from ml_backend.jobs.kinds import QualityRequest
from ml_backend.labelstudio.api import LabeledTask, LabelStudioAPI
from ml_backend.labelstudio.label_config import ControlSpec, ModelFamily, parse_label_config
from ml_backend.learning.heads import BASELINE, LinearHead, Regularisation, out_of_fold_proba
from ml_backend.models.classifier.model import ResNetEmbedder
from ml_backend.models.classifier.training import (
    _holdout,
    embed_images,
    fetch_images,
    targets_for,
)
from ml_backend.models.detector.boxes import DETECT_CHUNK, control_boxes
from ml_backend.models.detector.calibration import ConfidenceCalibration
from ml_backend.models.detector.model import DetectionSample, DetectorModel
from ml_backend.models.detector.training import detection_samples
from ml_backend.quality.detection_errors import detection_label_quality
from ml_backend.quality.like_correction import (
    LAST_CORRECTION_STATE,
    LIKE_CORRECTION_K,
    Correction,
    like_correction,
    write_like_correction,
)
from ml_backend.quality.scoring import label_issues, label_quality_scores
from ml_backend.quality.similar import save_index
from ml_backend.quality.views import (
    LABEL_ERRORS_VIEW,
    LIKE_CORRECTION_KEY,
    QUALITY_KEY,
    label_errors_view,
)
from ml_backend.runtime import Runtime

log = logging.getLogger(__name__)
QUALITY_STATE = "label-quality"
# Fewer labels than this (or fewer than two classes) give folds too small to say anything:
# the job reports "not-enough-labels" instead of scores.
MIN_LABELS = 10
FOLDS = 5
# Detection: ObjectLab needs no folds, but a ranking of fewer images than this is no list to
# review; the tasks the detector did not train on are about a fifth of the annotated ones.
MIN_DETECTION_TASKS = 5
# The detector's boxes down to this confidence go to cleanlab, which applies its own
# thresholds (0.5 and 0.95); the weak ones still set its scale of box similarity.
PREDICTION_FLOOR = 0.01
# Scores are written rounded, and only where the rounded value changed (one PATCH a task).
DECIMALS = 4


def embed_tasks(runtime: Runtime, embedder: ResNetEmbedder, tasks: list[dict[str, Any]],
                key: str) -> tuple[list[int], np.ndarray]:
    """Task ids whose ``key`` image embedded, and their embeddings (from the cache where the
    ranking or training put them)."""
    as_labeled = [LabeledTask(int(t["id"]), t.get("data") or {}, 0, "", []) for t in tasks]
    rows, x = embed_images(runtime, embedder, fetch_images(runtime, as_labeled, key))
    return [as_labeled[r].task_id for r in rows], x


@dataclass(frozen=True)
class ScoredTask:
    """One annotated task's label quality: ``score`` in [0, 1] (low: suspect), cleanlab's
    ``issue`` flag, and what was scored, by kind (``{"classification": {"label": "7"}}``)."""

    task: LabeledTask
    score: float
    issue: bool
    scored: dict[str, dict[str, Any]]


def merge_scored(scored: Sequence[ScoredTask]) -> list[ScoredTask]:
    """One entry per task, in first-seen order: a task scored by several kinds of annotation
    keeps the lowest score (its likeliest error) and is an issue when any kind flags it."""
    merged: dict[int, ScoredTask] = {}
    for item in scored:
        seen = merged.get(item.task.task_id)
        merged[item.task.task_id] = item if seen is None else ScoredTask(
            seen.task, min(seen.score, item.score), seen.issue or item.issue,
            {**seen.scored, **item.scored})
    return list(merged.values())


def score_labels(x: np.ndarray, y: np.ndarray, n_classes: int, head_regularisation: Regularisation,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(scores (N,), issues (N,) bool)`` for embeddings ``x`` labeled ``y``."""
    proba = out_of_fold_proba(x, y, n_classes, head_regularisation, FOLDS, seed)
    return label_quality_scores(proba, y), label_issues(proba, y)


def _single_choice(config: str) -> ControlSpec | None:
    controls = [c for c in parse_label_config(config).for_family(ModelFamily.CLASSIFIER)
                if not c.multiple]
    return controls[0] if controls else None


def quality_job(runtime: Runtime, request: QualityRequest) -> dict[str, Any]:
    """Job entry: score the labels, write the scores and the tab, rebuild the index."""
    project = request.project
    with runtime.store.locked(project, "quality"):
        return _quality_locked(runtime, project)


def _quality_locked(runtime: Runtime, project: int) -> dict[str, Any]:
    started = time.perf_counter()
    ls_api = runtime.label_studio("label quality")
    config = ls_api.label_config(project)
    version = runtime.store.latest(project)
    if version is None:
        return {"project": project, "status": "skipped", "detail": "no trained model"}
    labeled, unlabeled = ls_api.project_tasks(project)
    result: dict[str, Any] = {"project": project, "version": version.name}
    parts = {"classification": _classification(runtime, project, version, config, labeled,
                                               unlabeled, result),
             "detection": _detection(runtime, project, version, config, labeled)}
    summaries = {kind: summary for kind, (summary, _) in parts.items()}
    scored = merge_scored([item for _, items in parts.values() for item in items])
    if not scored:
        statuses = [s["status"] for s in summaries.values()]
        status = "not-enough-labels" if "not-enough-labels" in statuses else "skipped"
        detail = "; ".join(f"{kind}: {s['detail']}" for kind, s in summaries.items())
        n_labeled = sum(s.get("n_labeled", 0) for s in summaries.values())
        if status == "not-enough-labels":
            runtime.store.write_state(project, QUALITY_STATE, {
                "version": version.name, "status": status, "n": n_labeled, "parts": summaries,
                "computed_at": time.time()})
        return {**result, "status": status, "n_labeled": n_labeled, "detail": detail,
                **summaries}
    written = write_label_quality(runtime, ls_api, project, version.name, labeled, scored,
                                  summaries)
    seconds = round(time.perf_counter() - started, 3)
    log.info("project %s: label quality of %d tasks, %d suspected, %d written (%.1f s)",
             project, len(scored), written["issues"], written["written"], seconds)
    return {**result, "status": "scored", "n_labeled": len(scored), **written,
            "seconds": seconds, **summaries}


def write_label_quality(runtime: Runtime, ls_api: LabelStudioAPI, project: int, version: str,
                        labeled: Sequence[LabeledTask], scored: Sequence[ScoredTask],
                        parts: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Write each score that changed into its task's ``data`` (one PATCH a task), remove the
    score of every annotated task not scored this time (it would describe an older model),
    make sure the tab exists, and keep every score in the project's state, worst first."""
    written = 0
    for item in scored:
        value = round(item.score, DECIMALS)
        if item.task.data.get(QUALITY_KEY) != value:
            ls_api.update_task_data(item.task.task_id, {**item.task.data, QUALITY_KEY: value})
            written += 1
    current = {item.task.task_id for item in scored}
    cleared = 0
    for task in labeled:
        if task.task_id not in current and QUALITY_KEY in task.data:
            ls_api.update_task_data(task.task_id, {k: v for k, v in task.data.items()
                                                   if k != QUALITY_KEY})
            cleared += 1
    view = ls_api.ensure_view(project, LABEL_ERRORS_VIEW, label_errors_view())
    order = np.argsort([item.score for item in scored], kind="stable")
    worst = [{"task": scored[i].task.task_id, "score": round(scored[i].score, DECIMALS),
              "issue": scored[i].issue, **scored[i].scored} for i in order]
    issues = sum(item.issue for item in scored)
    runtime.store.write_state(project, QUALITY_STATE, {
        "version": version, "status": "scored", "n": len(scored), "issues": issues,
        "parts": parts, "computed_at": time.time(), "tasks": worst})
    return {"issues": issues, "written": written, "cleared": cleared, "view": view,
            "worst": worst[:10]}


# --- classification -------------------------------------------------------------------------
def _classification(runtime: Runtime, project: int, version: ModelVersion, config: str,
                    labeled: list[LabeledTask], unlabeled: list[dict[str, Any]],
                    result: dict[str, Any]) -> tuple[dict[str, Any], list[ScoredTask]]:
    """The single-choice control's scores from out-of-fold probabilities, and the
    find-similar index (``result["indexed"]``) from the same embeddings."""
    control = _single_choice(config)
    model = runtime.classifier.model(project) if control is not None else None
    if control is None or model is None:
        return {"status": "skipped", "detail": "no single-choice classification control "
                                               "with a trained model"}, []
    embedder = runtime.classifier.embedder(version)
    # The find-similar index: every task with an image, labeled or not.
    everything = [{"id": t.task_id, "data": t.data} for t in labeled] + unlabeled
    ids, vectors = embed_tasks(runtime, embedder, everything, control.value_key)
    if ids:
        save_index(runtime.store, project, ids, vectors, version.name, time.time())
    result["indexed"] = len(ids)
    by_id = dict(zip(ids, range(len(ids)), strict=True))
    head = model.heads.get(control.name)
    if head is not None:
        result["like_correction"] = _like_last_correction(
            runtime, project, control.name, head, ids, by_id, vectors, labeled, unlabeled)

    rows, y = targets_for(control, [t.result for t in labeled])
    usable = [(labeled[r], int(label)) for r, label in zip(rows, y, strict=True)
              if labeled[r].task_id in by_id]
    if len(usable) < MIN_LABELS or len({label for _, label in usable}) < 2:
        return {"status": "not-enough-labels", "n_labeled": len(usable),
                "detail": f"label quality needs {MIN_LABELS} labeled images in at least two "
                          "classes"}, []
    x = np.stack([vectors[by_id[task.task_id]] for task, _ in usable])
    labels = np.array([label for _, label in usable], dtype=np.int64)
    regularisation = head.regularisation() if head is not None else BASELINE
    scores, issues = score_labels(x, labels, len(control.labels), regularisation)
    scored = [ScoredTask(task, float(score), bool(issue),
                         {"classification": {"label": control.labels[label]}})
              for (task, label), score, issue in zip(usable, scores, issues, strict=True)]
    return {"status": "scored", "control": control.name, "n_labeled": len(scored),
            "issues": int(issues.sum())}, scored


def _like_last_correction(runtime: Runtime, project: int, control: str, head: LinearHead,
                          ids: list[int], rows: dict[int, int], vectors: np.ndarray,
                          labeled: list[LabeledTask], unlabeled: list[dict[str, Any]]
                          ) -> dict[str, Any]:
    """Mark the unlabeled tasks nearest the project's last correction of ``control`` that
    ``head`` (the new version's) labels as the annotator did, and clear older marks.
    ``rows``: the row of ``vectors`` of each task id of ``ids``."""
    state = runtime.store.read_state(project, LAST_CORRECTION_STATE) or {}
    try:
        corrections = [Correction.from_state(c) for c in state.get("corrections", [])]
    except (KeyError, TypeError, ValueError) as exc:
        log.error("project %s: unreadable last correction, ignored: %r", project, exc)
        corrections = []
    correction = next((c for c in corrections if c.control == control), None)
    # The data dicts the job read: the writes below update them, and the label-quality
    # scores written after start from them.
    tasks = {t.task_id: t.data for t in labeled} | {
        int(t["id"]): t["data"] for t in unlabeled if isinstance(t.get("data"), dict)}
    marked: dict[int, float] = {}
    summary: dict[str, Any] = {"status": "no-correction"}
    if correction is not None:
        summary = {"status": "marked", "task": correction.task, "label": correction.label,
                   "was": correction.predicted}
        if correction.task not in rows or correction.label not in head.labels:
            summary["status"] = "not-indexed" if correction.task not in rows else "unknown-label"
        else:
            open_rows = [rows[int(t["id"])] for t in unlabeled if int(t["id"]) in rows]
            predicted = head.predict_proba(vectors[open_rows]).argmax(axis=1)
            alike = predicted == head.labels.index(correction.label)
            picked, sims = like_correction(vectors, rows[correction.task], open_rows, alike)
            marked = {ids[row]: float(sim) for row, sim in zip(picked, sims, strict=True)}
            summary["nearest"] = min(LIKE_CORRECTION_K, len(open_rows))
            summary["marked"] = sorted(marked, key=lambda task_id: -marked[task_id])
    if correction is None and not any(LIKE_CORRECTION_KEY in d for d in tasks.values()):
        return summary  # nothing to mark, nothing to clear: no tab yet either
    ls_api = runtime.label_studio("like the last correction")
    return {**summary, **write_like_correction(
        ls_api, project, correction.task if correction else None, marked, tasks)}


# --- detection ------------------------------------------------------------------------------
def unseen_tasks(labeled: Sequence[LabeledTask], trained_on: Sequence[int]
                 ) -> list[LabeledTask]:
    """The annotated tasks whose boxes the detector never trained on."""
    seen = {int(t) for t in trained_on}
    return [task for task in labeled if task.task_id not in seen]


def predicted_boxes(model: DetectorModel, control: ControlSpec,
                    samples: Sequence[DetectionSample], max_pixels: int
                    ) -> list[Detections]:
    """The detector's boxes on each sample's image down to :data:`PREDICTION_FLOOR`, its
    classes mapped to ``control``'s labels as the predictions shown to annotators are
    (:func:`~ml_backend.models.detector.boxes.control_boxes`: a class mapped to no label is
    dropped), in the same pixel frame as the annotated boxes."""
    out: list[Detections] = []
    for start in range(0, len(samples), DETECT_CHUNK):
        chunk = samples[start:start + DETECT_CHUNK]
        images = [decode_image(s.image, max_pixels, source=s.name) for s in chunk]
        # Threshold 0: every box the detector returned above the floor goes to cleanlab.
        out += [control_boxes(control, raw, 0.0).detections
                for raw in model.detector.detect(images, PREDICTION_FLOOR)]
    return out


def calibrated(meta: dict[str, Any], predicted: list[Detections]
               ) -> tuple[str, list[Detections]]:
    """``predicted`` with the detector version's held-out confidence calibration applied
    (ObjectLab reads a confidence as the chance the box is right), and what was done, for
    the job's status. A version without one (too few right held-out boxes, or older) keeps
    its raw confidences; so does a broken record (logged)."""
    record = meta.get("confidence_calibration")
    if record is None:
        return "raw (the detector has no confidence calibration)", predicted
    try:
        calibration = ConfidenceCalibration.from_meta(record)
    except (KeyError, TypeError, ValueError) as exc:
        log.error("detector %s: unreadable confidence calibration, raw confidences used: %r",
                  meta.get("digest"), exc)
        return "raw (the detector's confidence calibration is unreadable)", predicted
    return (f"calibrated on {calibration.n_boxes} held-out boxes "
            f"({calibration.n_right} right)", [calibration.applied(p) for p in predicted])


def _detection(runtime: Runtime, project: int, version: ModelVersion, config: str,
               labeled: list[LabeledTask]) -> tuple[dict[str, Any], list[ScoredTask]]:
    """ObjectLab scores of the annotated tasks the current detector did not train on."""
    meta = version.manifest.get("detector") or {}
    controls = {c.name: c for c in parse_label_config(config).for_family(ModelFamily.DETECTOR)}
    if not meta or not controls:
        return {"status": "skipped", "detail": "no RectangleLabels control with a trained "
                                               "detector"}, []
    control = controls.get(meta.get("control", ""))
    if control is None:
        return {"status": "skipped", "detail": f"the detector was trained on control "
                f"{meta.get('control')!r}, which the label config no longer has"}, []
    if "trained_on" not in meta:
        return {"status": "skipped", "detail": f"detector {version.name} predates the record "
                "of the tasks it trained on; the next detector training keeps it"}, []
    samples, ids = detection_samples(runtime, control, unseen_tasks(labeled, meta["trained_on"]))
    held_out = _holdout(ids)
    # Honest about what was scored: tasks of the fixed held-out split (no round trains on
    # them), and training-split tasks annotated since this detector trained (the next round
    # trains on them, and their score is then removed).
    scored_on = {"held_out_split": int(held_out.sum()),
                 "not_yet_trained": int((~held_out).sum())}
    if len(samples) < MIN_DETECTION_TASKS:
        return {"status": "not-enough-labels", "n_labeled": len(samples),
                "scored_on": scored_on,
                "detail": f"detection label quality needs {MIN_DETECTION_TASKS} annotated "
                          f"images the detector did not train on (its held-out split or "
                          f"annotated since); there are {len(samples)}"}, []
    try:
        model = runtime.detector.model(project)
    except ModelUnavailable as exc:
        # As in serving, a broken detector costs only its part (/health reports it too).
        log.error("project %s: detector unavailable, no detection label quality: %s",
                  project, exc)
        return {"status": "skipped", "detail": f"detector unavailable: {exc}"}, []
    if model is None or model.digest != meta.get("digest"):
        return {"status": "skipped", "detail": "a newer detector was saved meanwhile; the "
                                               "quality job its training chains scores it"}, []
    predicted = predicted_boxes(model, control, samples, runtime.settings.max_image_pixels)
    confidence, predicted = calibrated(meta, predicted)
    given = [LabeledBoxes(s.xyxy, tuple(control.labels[int(c)] for c in s.class_ids))
             for s in samples]
    quality = detection_label_quality(given, predicted, control.labels)
    by_id = {task.task_id: task for task in labeled}
    scored = [ScoredTask(by_id[task_id], float(score), bool(issue),
                         {"detection": {"boxes": len(g),
                                        "split": "held-out" if held else "training"}})
              for task_id, g, score, issue, held in zip(ids, given, quality.scores,
                                                         quality.issues, held_out, strict=True)]
    return {"status": "scored", "control": control.name, "n_labeled": len(scored),
            "issues": int(quality.issues.sum()), "scored_on": scored_on,
            "confidence": confidence}, scored
