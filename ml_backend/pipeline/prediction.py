"""Batch and interactive prediction over every model family, with no HTTP and no job queue
in it: the HTTP layer's ``/predict`` and the pre-annotation jobs both call it.

A task whose image cannot be had gets an empty prediction and a logged reason; the rest of
the batch is unaffected. A family whose model is unavailable adds nothing (its error is in
/health and the log); the others still predict.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Any

import numpy as np

from ml_backend.core.errors import BadRequest, ImageError, LabelStudioUnavailable, ModelUnavailable
from ml_backend.core.images import LoadedImage
from ml_backend.core.metrics import Metrics
from ml_backend.labelstudio.label_config import ControlSpec, ModelFamily, ParsedConfig
from ml_backend.labelstudio.results import (
    Mask,
    Output,
    classification_outputs,
    combine_outputs,
    empty_prediction,
    task_prediction,
)
from ml_backend.models.clipseg.prompts import (
    TEXT_PROMPT_CONTROLS,
    Refiner,
    TextSettings,
    TypedPrompt,
    context_threshold,
    label_for_text,
    label_maps,
    label_prompt,
    text_outputs,
)
from ml_backend.models.detector.boxes import (
    DETECT_CHUNK,
    boxes_outputs,
    detect_images,
    unmapped_controls,
)
from ml_backend.models.sam.model import SamPrompt
from ml_backend.models.sam.precompute import embed_image
from ml_backend.models.sam.prompts import ClickRequest
from ml_backend.runtime import ClassifierModel, Runtime

log = logging.getLogger(__name__)

EMBED_CHUNK = 16
TaskOutputs = tuple[list[Output], float]  # one task's outputs and its uncertainty


@functools.lru_cache(maxsize=4)
def predictor_for(runtime: Runtime) -> Predictor:
    """The one Predictor of ``runtime`` (it owns image download threads): ``/predict`` and
    the pre-annotation jobs share it, and count into the runtime's metrics."""
    return Predictor(runtime, runtime.metrics)


class Predictor:
    """Predictions for tasks of a parsed label config; one per runtime (see
    :func:`predictor_for`)."""

    def __init__(self, runtime: Runtime, metrics: Metrics) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self._io = ThreadPoolExecutor(max_workers=8, thread_name_prefix="image-io")
        self._deadline = threading.local()  # per calling thread: the request's time budget

    def predict_tasks(self, tasks: list[Any], parsed: ParsedConfig, project: int | None,
                      budget_s: float | None = None) -> list[dict[str, Any]]:
        """One prediction per task, in order (``result``, ``score``, ``model_version``).

        With ``budget_s``, images not yet loaded when it has run out are not predicted: their
        tasks get an empty prediction (logged, counted as ``time-budget`` task errors), so
        the answer still arrives before Label Studio gives up on the request."""
        self._deadline.value = None if budget_s is None else time.monotonic() + budget_s
        classify = parsed.for_family(ModelFamily.CLASSIFIER)
        detect = parsed.for_family(ModelFamily.DETECTOR)
        version = self.runtime.model_version(project)
        per_family: list[list[TaskOutputs | None]] = []
        if classify:
            model = self.runtime.classifier(project)
            if model is not None:
                per_family.append(self._classify(tasks, classify, model))
                version = model.version
                self.metrics.predictions.labels(family=ModelFamily.CLASSIFIER.value).inc(
                    len(tasks))
        detected = None
        if detect:
            detected = self._detect_tasks(tasks, detect, project)
            if detected is not None:
                per_family.append(detected)
                self.metrics.predictions.labels(family=ModelFamily.DETECTOR.value).inc(
                    len(tasks))
        text_controls = self._text_controls(parsed, detector_missing=detected is None)
        if text_controls:
            prompted = self._text_tasks(tasks, text_controls, parsed)
            if prompted is not None:
                per_family.append(prompted)
                self.metrics.predictions.labels(
                    family=ModelFamily.TEXT_SEGMENTER.value).inc(len(tasks))
        # Untrained (nothing to show): the uniform confidence is the honest score; with
        # boxes only, 0 (nothing known about the image).
        untrained = min((1.0 / max(len(c.labels), 1) for c in classify), default=0.0)
        results = []
        for row in range(len(tasks)):
            combined = combine_outputs([family[row] for family in per_family])
            if combined is None:
                results.append(empty_prediction(version, 1.0 if per_family else untrained))
            else:
                results.append(task_prediction(combined[0], version, 1.0 - combined[1]))
        return results

    def segment(self, tasks: list[Any], click: ClickRequest, project: int | None
                 ) -> dict[str, Any]:
        """One smart-tool request: the mask SAM draws for the clicks and box, as the one
        prediction Label Studio shows as a suggestion. SAM being unavailable is a 503 naming
        what to set; the other controls are untouched (they are not asked for here)."""
        if len(tasks) != 1:
            raise BadRequest(f"an interactive request (context with smart-tool regions) is for "
                             f"one task, got {len(tasks)}")
        task = tasks[0]
        data = task.get("data") if isinstance(task, dict) else None
        url = data.get(click.target.value_key) if isinstance(data, dict) else None
        if not isinstance(url, str) or not url:
            raise BadRequest(f"task data has no image URL under '{click.target.value_key}'")
        task_id = task.get("id") if isinstance(task.get("id"), int) else None
        segmenter = self.runtime.segmenter()
        started = time.perf_counter()
        lookup = embed_image(self.runtime, url, task_id)
        self.metrics.sam_embeddings.labels(source=lookup.source).inc()
        height, width = lookup.embedding.original_size
        embedded = time.perf_counter()
        found = segmenter.segment(lookup.embedding, click.prompt(width, height))
        decoded = time.perf_counter()
        self.metrics.predictions.labels(family=ModelFamily.SEGMENTER.value).inc()
        mask = Mask(click.target, click.label, found.mask, found.score,
                    self.runtime.settings.sam_polygon_tolerance_px)
        prediction = task_prediction([mask], self.runtime.model_version(project), found.score)
        log.debug("click: embedding %.1f ms (%s), decode %.1f ms, regions %.1f ms",
                  1000 * (embedded - started), lookup.source, 1000 * (decoded - embedded),
                  1000 * (time.perf_counter() - decoded))
        return prediction

    def _text_controls(self, parsed: ParsedConfig, detector_missing: bool
                       ) -> tuple[ControlSpec, ...]:
        """The controls CLIPSeg pre-labels: those marked ``model="clipseg"``; when CLIPSeg
        is configured also box controls while no detector is trained (zero-shot until
        then) and mask controls (SAM only answers clicks). ``model="yolo"`` / ``"sam"``
        keeps a control to that family."""
        if not self.runtime.clipseg_configured():
            return ()
        chosen = list(parsed.for_family(ModelFamily.TEXT_SEGMENTER))
        if detector_missing:
            chosen += [c for c in parsed.for_family(ModelFamily.DETECTOR) if c.model != "yolo"]
        chosen += [c for c in parsed.for_family(ModelFamily.SEGMENTER) if c.model != "sam"]
        return tuple(chosen)

    def _text_settings(self) -> TextSettings:
        settings = self.runtime.settings
        return TextSettings(settings.clipseg_threshold, settings.clipseg_min_area,
                            settings.sam_polygon_tolerance_px)

    def _text_tasks(self, tasks: list[Any], controls: tuple[ControlSpec, ...],
                    parsed: ParsedConfig) -> list[TaskOutputs | None] | None:
        """Every task's CLIPSeg boxes and masks, or None when CLIPSeg is unavailable (the
        error is in /health and the log; the other families still predict). Each image
        gets one backbone pass and one decoder batch for all its labels' prompts."""
        try:
            model = self.runtime.text_segmenter()
        except ModelUnavailable as exc:
            log.error("predict: CLIPSeg unavailable, no text-prompted regions: %s", exc)
            return None
        background = self.runtime.settings.clipseg_background_prompt or None
        out: list[TaskOutputs | None] = [None] * len(tasks)
        by_key: dict[str, list[ControlSpec]] = {}
        for control in controls:
            by_key.setdefault(control.value_key, []).append(control)
        for key, group in by_key.items():
            prompts = list(dict.fromkeys(label_prompt(c, lab) for c in group for lab in c.labels))
            threshold = context_threshold(None, parsed, group[0].to_name)
            pending = [self._io.submit(self._load, task, key, self._now_deadline())
                       for task in tasks[:DETECT_CHUNK]]
            for i in range(len(tasks)):
                item = pending.pop(0).result()
                if i + DETECT_CHUNK < len(tasks):  # keep a few images loading ahead
                    pending.append(self._io.submit(self._load, tasks[i + DETECT_CHUNK], key,
                                                   self._now_deadline()))
                if not isinstance(item, LoadedImage):
                    self._task_failed(tasks[i], item)
                    continue
                image, source = self.runtime.clipseg_image(model, item.sha256, item.pixels)
                self.metrics.clipseg_activations.labels(source=source).inc()
                probability = model.probabilities(image, prompts, background)
                found = text_outputs(group, label_maps(group, prompts, probability),
                                     image.image_size, self._text_settings(), threshold,
                                     self._refiner(tasks[i], key, group))
                out[i] = combine_outputs([out[i], found])
        return out

    def text_prompt(self, tasks: list[Any], typed: TypedPrompt, parsed: ParsedConfig,
                     context: Any, project: int | None) -> dict[str, Any]:
        """Text an annotator typed: its boxes and masks on the task's image, in every box or
        mask control of that image, as one suggestion. CLIPSeg being unavailable is a 503
        naming what to set."""
        if len(tasks) != 1:
            raise BadRequest(f"a typed prompt is for one task, got {len(tasks)}")
        controls = tuple(c for c in parsed.controls if c.tag in TEXT_PROMPT_CONTROLS
                         and c.to_name == typed.image and c.labels)
        if not controls:
            raise BadRequest(f"TextArea prompt on '{typed.image}': the image has no "
                             "RectangleLabels, BrushLabels or PolygonLabels to fill")
        model = self.runtime.text_segmenter()
        key = controls[0].value_key
        item = self._load(tasks[0], key)
        if not isinstance(item, LoadedImage):
            raise BadRequest(f"task {_task_id(tasks[0])}: {item[1]}")
        image, source = self.runtime.clipseg_image(model, item.sha256, item.pixels)
        self.metrics.clipseg_activations.labels(source=source).inc()
        background = self.runtime.settings.clipseg_background_prompt or None
        probability = model.probabilities(image, [typed.text], background)[0]
        maps = {c.name: {label_for_text(c, typed.text): probability} for c in controls}
        outputs, uncertainty = text_outputs(
            controls, maps, image.image_size, self._text_settings(),
            context_threshold(context, parsed, typed.image),
            self._refiner(tasks[0], key, controls))
        self.metrics.predictions.labels(family=ModelFamily.TEXT_SEGMENTER.value).inc()
        return task_prediction(outputs, self.runtime.model_version(project), 1.0 - uncertainty)

    def _refiner(self, task: Any, key: str, controls: tuple[ControlSpec, ...] | list[ControlSpec]
                 ) -> Refiner | None:
        """text -> box -> SAM mask, when asked for (CLIPSEG_SAM_REFINE or a control's
        ``sam_refine="true"``) and SAM is configured; else None (CLIPSeg's own mask)."""
        wanted = self.runtime.settings.clipseg_sam_refine or any(
            c.attrs.get("sam_refine", "").lower() == "true" for c in controls)
        if not wanted or not self.runtime.sam_configured():
            return None
        url = task["data"][key]
        task_id = task.get("id") if isinstance(task.get("id"), int) else None

        def refine(xyxy: np.ndarray) -> list[tuple[np.ndarray, float]]:
            segmenter = self.runtime.segmenter()
            lookup = embed_image(self.runtime, url, task_id)
            self.metrics.sam_embeddings.labels(source=lookup.source).inc()
            found = [segmenter.segment(lookup.embedding,
                                       SamPrompt(np.zeros((0, 2)), np.zeros(0, bool), box))
                     for box in xyxy]
            return [(f.mask, f.score) for f in found]

        return refine

    def _classify(self, tasks: list[Any], controls: tuple[ControlSpec, ...],
                  model: ClassifierModel) -> list[TaskOutputs | None]:
        usable = [c for c in controls
                  if c.name in model.heads and model.heads[c.name].labels == c.labels]
        if len(usable) < len(controls):
            log.warning("predict: controls without a head for the current labels get no "
                        "prediction until the next training: %s",
                        [c.name for c in controls if c not in usable])
        keys = sorted({c.value_key for c in usable})
        futures = {self._io.submit(self._load, task, key, self._now_deadline()): (i, key)
                   for i, task in enumerate(tasks) for key in keys}
        sha_of: dict[tuple[int, str], str] = {}
        failed: set[int] = set()
        vectors: dict[str, np.ndarray] = {}
        waiting: dict[str, LoadedImage] = {}

        def embed_waiting() -> None:
            shas = list(waiting)
            for sha, vec in zip(shas, model.embedder.embed(
                    shas, lambda j: waiting[shas[j]].pixels), strict=True):
                vectors[sha] = vec
            waiting.clear()

        # Embed in chunks as downloads complete, so the model works while images arrive;
        # pixels are dropped once embedded, so a large batch never holds them all at once.
        for future in as_completed(futures):
            i, key = futures.pop(future)
            item = future.result()
            if isinstance(item, LoadedImage):
                sha_of[(i, key)] = item.sha256
                if item.sha256 not in vectors:
                    waiting[item.sha256] = item
                if len(waiting) >= EMBED_CHUNK:
                    embed_waiting()
            else:
                failed.add(i)
                self._task_failed(tasks[i], item)
        if waiting:
            embed_waiting()
        ok = [i for i in range(len(tasks)) if i not in failed] if usable else []
        out: list[TaskOutputs | None] = [None] * len(tasks)
        if ok:
            probas = {}
            for control in usable:
                matrix = np.stack([vectors[sha_of[(i, control.value_key)]] for i in ok])
                probas[control.name] = model.heads[control.name].predict_proba(matrix)
            items = classification_outputs(usable, probas, self.runtime.settings.ranking_strategy)
            for i, item in zip(ok, items, strict=True):
                out[i] = item
        return out

    def _detect_tasks(self, tasks: list[Any], controls: tuple[ControlSpec, ...],
                      project: int | None) -> list[TaskOutputs | None] | None:
        """Boxes for every task, or None when there is no detector to use (untrained, or its
        weights are unavailable: reported in /health, the other controls still predict)."""
        try:
            model = self.runtime.detector(project)
        except ModelUnavailable as exc:
            log.error("predict: detector unavailable, no boxes: %s", exc)
            return None
        if model is None:
            return None
        unmapped = unmapped_controls(model, controls)
        if unmapped:
            log.warning("predict: the detector's classes match no label of %s (map them with "
                        "predicted_values on <Label>)", unmapped)
        out: list[TaskOutputs | None] = [None] * len(tasks)
        threshold = self.runtime.settings.detector_min_score
        by_key: dict[str, list[ControlSpec]] = {}
        for control in controls:
            by_key.setdefault(control.value_key, []).append(control)
        for key, group in by_key.items():
            # Chunk by chunk, the next chunk's images loading while this one is detected:
            # at most two chunks of decoded images are held, however large the request.
            chunks = [range(i, min(i + DETECT_CHUNK, len(tasks)))
                      for i in range(0, len(tasks), DETECT_CHUNK)]

            def load(rows: range, k: str = key) -> list[Future[LoadedImage | tuple[str, str]]]:
                return [self._io.submit(self._load, tasks[i], k, self._now_deadline())
                        for i in rows]

            pending = load(chunks[0]) if chunks else []
            for n, rows in enumerate(chunks):
                loaded = [future.result() for future in pending]
                pending = load(chunks[n + 1]) if n + 1 < len(chunks) else []
                good = [(i, item) for i, item in zip(rows, loaded, strict=True)
                        if isinstance(item, LoadedImage)]
                for i, item in zip(rows, loaded, strict=True):
                    if not isinstance(item, LoadedImage):
                        self._task_failed(tasks[i], item)
                if not good:
                    continue
                boxes = detect_images(model, group, [item.pixels for _, item in good],
                                      threshold)
                for (i, _), outputs in zip(good, boxes, strict=True):
                    out[i] = combine_outputs([out[i], boxes_outputs(outputs)])
        return out

    def _task_failed(self, task: Any, reason: tuple[str, str]) -> None:
        self.metrics.task_errors.labels(reason=reason[0]).inc()
        log.warning("predict: task %s gets no prediction from this model: %s",
                    _task_id(task), reason[1])

    def _now_deadline(self) -> float | None:
        return getattr(self._deadline, "value", None)

    def _load(self, task: Any, key: str, deadline: float | None = None
              ) -> LoadedImage | tuple[str, str]:
        """A task's image, or ``(reason, message)`` when it cannot be had (or the request's
        time budget ran out before it was its turn)."""
        if deadline is not None and time.monotonic() > deadline:
            return ("time-budget", "not predicted: the request's time budget "
                    f"(REQUEST_TIME_BUDGET_S={self.runtime.settings.request_time_budget_s:g}) "
                    "ran out; ask again for this task")
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            return "bad-task", "task has no 'data' object"
        url = task["data"].get(key)
        if not isinstance(url, str) or not url:
            return "no-image", f"task data has no image URL under '{key}'"
        task_id = task.get("id") if isinstance(task.get("id"), int) else None
        try:
            return self.runtime.images.load(url, task_id=task_id)
        except (ImageError, LabelStudioUnavailable) as exc:
            return type(exc).__name__, str(exc)


def _task_id(task: Any) -> Any:
    return task.get("id") if isinstance(task, dict) else None
