"""Batch and interactive prediction over every model family, with no HTTP and no job queue
in it: the HTTP layer's ``/predict``, the pre-annotation jobs and re-ranking all call it
(:meth:`Predictor.score_tasks` is their one batch path).

A task whose image cannot be had gets an empty prediction and a logged reason; the rest of
the batch is unaffected. A family whose model is unavailable adds nothing (its error is in
/health and the log); the others still predict.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml_backend.core.errors import BadRequest, ImageError, LabelStudioUnavailable, ModelUnavailable
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
from ml_backend.learning.selection import Strategy, uncertainty_table
from ml_backend.models.classifier.model import ResNetEmbedder
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
from ml_backend.models.sam.encoding import embed_image
from ml_backend.models.sam.model import SamPrompt
from ml_backend.models.sam.prompts import ClickRequest
from ml_backend.runtime import Runtime

log = logging.getLogger(__name__)

EMBED_CHUNK = 16
TaskOutputs = tuple[list[Output], float]  # one task's outputs and its uncertainty
Failure = tuple[str, str]  # why a task's image cannot be had: (task_errors reason, message)


@dataclass(frozen=True)
class TaskImage:
    """One task's image as a batch needs it: the ``sha256`` of its bytes, and ``pixels``
    (H x W x 3 uint8 RGB) unless the classifier's ``embedding`` of it was cached, in which
    case it is never decoded."""

    sha256: str
    pixels: np.ndarray | None = None
    embedding: np.ndarray | None = None

    def rgb(self) -> np.ndarray:
        if self.pixels is None:
            raise RuntimeError(f"image {self.sha256[:12]} was not decoded (its embedding was "
                               "cached): load it without an embedding lookup to see pixels")
        return self.pixels


@dataclass(frozen=True)
class Embeddings:
    """The classifier's embedding of each predicted row's ``key`` image, and the
    ``embedder`` that made them, to embed other images (labeled ones) in the same space."""

    key: str
    embedder: ResNetEmbedder
    by_row: dict[int, np.ndarray]


@dataclass(frozen=True)
class FamilyScores:
    """One model family's predictions for a batch, by task row; a row it did not predict is
    absent (an image of it failed: see :attr:`BatchScores.failures`). ``controls``: the ones
    it predicts, none when its model fits no control of the label config. ``uncertainty``:
    a row's every uncertainty score by name (each strategy's for the classifier, the least
    certain control deciding; ``detection`` for boxes), shown by GET /ranking."""

    family: ModelFamily
    version: str
    controls: tuple[ControlSpec, ...]
    outputs: dict[int, TaskOutputs]
    uncertainty: dict[int, dict[str, float]]
    embeddings: Embeddings | None = None


@dataclass(frozen=True)
class BatchScores:
    """A batch predicted by every family that has a model for its controls. ``failures``:
    the rows an image of which could not be had, with why (once per image and family that
    wanted it)."""

    families: list[FamilyScores]
    failures: dict[int, list[Failure]] = field(default_factory=dict)


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

    def predict_tasks(self, tasks: list[Any], parsed: ParsedConfig, project: int | None,
                      budget_s: float | None = None) -> list[dict[str, Any]]:
        """One prediction per task, in order (``result``, ``score``, ``model_version``).

        With ``budget_s``, images not yet loaded when it has run out are not predicted: their
        tasks get an empty prediction (logged, counted as ``time-budget`` task errors), so
        the answer still arrives before Label Studio gives up on the request."""
        deadline = None if budget_s is None else time.monotonic() + budget_s
        scored = self.score_tasks(tasks, parsed, project, self.runtime.settings.ranking_strategy,
                                  deadline)
        self._tasks_failed(tasks, scored.failures)
        version = self.runtime.model_version(project)
        per_family: list[list[TaskOutputs | None]] = []
        for family in scored.families:
            per_family.append([family.outputs.get(row) for row in range(len(tasks))])
            self.metrics.predictions.labels(family=family.family.value).inc(len(tasks))
            if family.family is ModelFamily.CLASSIFIER:
                version = family.version
        detected = any(f.family is ModelFamily.DETECTOR for f in scored.families)
        text_controls = self._text_controls(parsed, detector_missing=not detected)
        if text_controls:
            prompted = self._text_tasks(tasks, text_controls, parsed, deadline)
            if prompted is not None:
                per_family.append(prompted)
                self.metrics.predictions.labels(
                    family=ModelFamily.TEXT_SEGMENTER.value).inc(len(tasks))
        # Untrained (nothing to show): the uniform confidence is the honest score; with
        # boxes only, 0 (nothing known about the image).
        untrained = min((1.0 / max(len(c.labels), 1)
                         for c in parsed.for_family(ModelFamily.CLASSIFIER)), default=0.0)
        results = []
        for row in range(len(tasks)):
            combined = combine_outputs([family[row] for family in per_family])
            if combined is None:
                results.append(empty_prediction(version, 1.0 if per_family else untrained))
            else:
                results.append(task_prediction(combined[0], version, 1.0 - combined[1]))
        return results

    def score_tasks(self, tasks: Sequence[Any], parsed: ParsedConfig, project: int | None,
                    strategy: Strategy, deadline: float | None = None) -> BatchScores:
        """The classifier's and the detector's outputs for ``tasks`` (Label Studio task
        dicts) by row, with what ranking needs besides: the one batch path of ``/predict``,
        pre-annotation and re-ranking. ``strategy`` decides a classified task's uncertainty
        (the score it is written with). Images load on the I/O pool a chunk at a time, so a
        whole project's never sit in memory at once; those not started by ``deadline`` (a
        ``time.monotonic()`` value) fail as ``time-budget``. A family without a model for its
        controls is left out (an unavailable one is logged: its error is in /health)."""
        failures: dict[int, list[Failure]] = {}
        found = (self._classifier_scores(tasks, parsed.for_family(ModelFamily.CLASSIFIER),
                                         project, strategy, deadline, failures),
                 self._detector_scores(tasks, parsed.for_family(ModelFamily.DETECTOR), project,
                                       deadline, failures))
        return BatchScores([f for f in found if f is not None], failures)

    def embed_tasks(self, tasks: Sequence[Any], key: str, embedder: ResNetEmbedder,
                    failures: dict[int, list[Failure]], deadline: float | None = None
                    ) -> dict[int, np.ndarray]:
        """The embedding of each task's ``key`` image by row; the rows whose image cannot be
        had are added to ``failures`` instead. Cached embeddings are used without decoding
        their image; the others are embedded a chunk at a time as the chunk arrives."""
        def cached(sha: str) -> np.ndarray | None:
            return embedder.cache.get_many(embedder.digest, [sha]).get(sha)

        vectors: dict[int, np.ndarray] = {}
        for loaded in self._chunks(tasks, key, EMBED_CHUNK, deadline, failures, cached):
            rows = [row for row, _ in loaded]
            vectors.update(zip(rows, _embed(embedder, [image for _, image in loaded]),
                               strict=True))
        return vectors

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
                    parsed: ParsedConfig, deadline: float | None
                    ) -> list[TaskOutputs | None] | None:
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
            failures: dict[int, list[Failure]] = {}
            for loaded in self._chunks(tasks, key, DETECT_CHUNK, deadline, failures):
                for i, item in loaded:
                    image, source = self.runtime.clipseg_image(model, item.sha256, item.rgb())
                    self.metrics.clipseg_activations.labels(source=source).inc()
                    probability = model.probabilities(image, prompts, background)
                    found = text_outputs(group, label_maps(group, prompts, probability),
                                         image.image_size, self._text_settings(), threshold,
                                         self._refiner(tasks[i], key, group))
                    out[i] = combine_outputs([out[i], found])
            self._tasks_failed(tasks, failures)
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
        item = self._fetch(tasks[0], key)
        if not isinstance(item, TaskImage):
            raise BadRequest(f"task {_task_id(tasks[0])}: {item[1]}")
        image, source = self.runtime.clipseg_image(model, item.sha256, item.rgb())
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

    def _classifier_scores(self, tasks: Sequence[Any], controls: tuple[ControlSpec, ...],
                           project: int | None, strategy: Strategy, deadline: float | None,
                           failures: dict[int, list[Failure]]) -> FamilyScores | None:
        """Choices for every task, or None before the project's first training."""
        model = self.runtime.classifier(project) if controls else None
        if model is None:
            return None
        usable = tuple(c for c in controls
                       if c.name in model.heads and model.heads[c.name].labels == c.labels)
        if len(usable) < len(controls):
            log.warning("project %s: controls without a head for the current labels get no "
                        "prediction until the next training: %s", project,
                        [c.name for c in controls if c not in usable])
        # Each control is scored on its own image; a task needs all of them.
        by_key = {key: self.embed_tasks(tasks, key, model.embedder, failures, deadline)
                  for key in dict.fromkeys(c.value_key for c in usable)}
        good = sorted(set.intersection(*(set(v) for v in by_key.values()))) if by_key else []
        outputs: dict[int, TaskOutputs] = {}
        uncertainty: dict[int, dict[str, float]] = {}
        if good:
            probas = {c.name: model.heads[c.name].predict_proba(
                np.stack([by_key[c.value_key][r] for r in good])) for c in usable}
            outputs = dict(zip(good, classification_outputs(usable, probas, strategy),
                               strict=True))
            tables = [uncertainty_table(probas[c.name], c.multiple) for c in usable]
            uncertainty = {r: {name: float(np.max([t[name][j] for t in tables]))
                               for name in tables[0]} for j, r in enumerate(good)}
        # The first control's image carries ranked batch sampling's diversity term.
        embeddings = None if not usable else Embeddings(
            usable[0].value_key, model.embedder,
            {r: by_key[usable[0].value_key][r] for r in good})
        return FamilyScores(ModelFamily.CLASSIFIER, model.version, usable, outputs, uncertainty,
                            embeddings)

    def _detector_scores(self, tasks: Sequence[Any], controls: tuple[ControlSpec, ...],
                         project: int | None, deadline: float | None,
                         failures: dict[int, list[Failure]]) -> FamilyScores | None:
        """Boxes for every task, or None when there is no detector to use (untrained, or its
        weights are unavailable: reported in /health, the other controls still predict)."""
        if not controls:
            return None
        try:
            model = self.runtime.detector(project)
        except ModelUnavailable as exc:
            log.error("project %s: detector unavailable, no boxes: %s", project, exc)
            return None
        if model is None:
            return None
        unmapped = unmapped_controls(model, controls)
        if unmapped:
            log.warning("project %s: the detector's classes match no label of %s (map them "
                        "with predicted_values on <Label>)", project, unmapped)
        threshold = self.runtime.settings.detector_min_score
        outputs: dict[int, TaskOutputs] = {}
        for key in dict.fromkeys(c.value_key for c in controls):
            group = [c for c in controls if c.value_key == key]
            for loaded in self._chunks(tasks, key, DETECT_CHUNK, deadline, failures):
                if not loaded:
                    continue
                boxes = detect_images(model, group, [image.rgb() for _, image in loaded],
                                      threshold)
                for (row, _), found in zip(loaded, boxes, strict=True):
                    combined = combine_outputs([outputs.get(row), boxes_outputs(found)])
                    if combined is not None:
                        outputs[row] = combined
        return FamilyScores(ModelFamily.DETECTOR, model.version, controls, outputs,
                            {r: {"detection": o[1]} for r, o in outputs.items()})

    def _chunks(self, tasks: Sequence[Any], key: str, size: int, deadline: float | None,
                failures: dict[int, list[Failure]],
                cached: Callable[[str], np.ndarray | None] | None = None
                ) -> Iterator[list[tuple[int, TaskImage]]]:
        """The ``key`` images of ``tasks``, ``size`` rows at a time: each chunk's rows whose
        image loaded (the others go to ``failures``). The next chunk loads on the I/O pool
        while the caller works on this one, and only then: about two chunks of decoded
        images are held at a time, however many tasks."""
        def submit(start: int) -> list[tuple[int, Future[TaskImage | Failure]]]:
            return [(row, self._io.submit(self._fetch, tasks[row], key, deadline, cached))
                    for row in range(start, min(start + size, len(tasks)))]

        pending = submit(0)
        for start in range(0, len(tasks), size):
            loaded = []
            for row, future in pending:
                item = future.result()
                if isinstance(item, TaskImage):
                    loaded.append((row, item))
                else:
                    failures.setdefault(row, []).append(item)
            pending = submit(start + size)
            yield loaded

    def _tasks_failed(self, tasks: Sequence[Any], failures: dict[int, list[Failure]]) -> None:
        for row, reasons in failures.items():
            for reason, message in reasons:
                self.metrics.task_errors.labels(reason=reason).inc()
                log.warning("predict: task %s gets no prediction from this model: %s",
                            _task_id(tasks[row]), message)

    def _fetch(self, task: Any, key: str, deadline: float | None = None,
               cached: Callable[[str], np.ndarray | None] | None = None
               ) -> TaskImage | Failure:
        """A task's ``key`` image, decoded unless ``cached`` has its embedding, or why it
        cannot be had (or the request's time budget ran out before it was its turn)."""
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
            data, sha256 = self.runtime.images.load_bytes(url, task_id=task_id)
            embedding = cached(sha256) if cached is not None else None
            if embedding is not None:
                return TaskImage(sha256, embedding=embedding)
            return TaskImage(sha256, pixels=self.runtime.images.decode(data, url))
        except (ImageError, LabelStudioUnavailable) as exc:
            return type(exc).__name__, str(exc)


def _embed(embedder: ResNetEmbedder, images: Sequence[TaskImage]) -> list[np.ndarray]:
    """Each image's embedding: the cached one, else one made from its pixels (an image that
    comes twice is embedded once)."""
    known = {i.sha256: i.embedding for i in images if i.embedding is not None}
    pixels = {i.sha256: i.rgb() for i in images if i.embedding is None}
    shas = list(dict.fromkeys(i.sha256 for i in images))
    by_sha = dict(zip(shas, embedder.embed(shas, lambda j: pixels[shas[j]], cached=known),
                      strict=True))
    return [by_sha[i.sha256] for i in images]


def _task_id(task: Any) -> Any:
    return task.get("id") if isinstance(task, dict) else None
