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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ml_backend.core.errors import BadRequest, ModelUnavailable
from ml_backend.core.metrics import Metrics
from ml_backend.core.task_images import Failure, ImageBatch, TaskImage, task_id
from ml_backend.labelstudio.label_config import ControlSpec, ModelFamily, ParsedConfig
from ml_backend.labelstudio.results import (
    Mask,
    combine_outputs,
    empty_prediction,
    task_prediction,
)
from ml_backend.learning.selection import Strategy
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
from ml_backend.models.detector.boxes import DETECT_CHUNK
from ml_backend.models.family import FamilyScores, TaskOutputs
from ml_backend.models.sam.encoding import embed_image
from ml_backend.models.sam.model import SamPrompt
from ml_backend.models.sam.prompts import ClickRequest
from ml_backend.runtime import Runtime

log = logging.getLogger(__name__)


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

    def batch(self, tasks: Sequence[Any], deadline: float | None = None) -> ImageBatch:
        """``tasks`` whose images load on this predictor's I/O pool (see
        :class:`ImageBatch`)."""
        return ImageBatch(tasks, self.runtime.images, self._io, deadline,
                          self.runtime.settings.request_time_budget_s)

    def score_tasks(self, tasks: Sequence[Any], parsed: ParsedConfig, project: int | None,
                    strategy: Strategy, deadline: float | None = None) -> BatchScores:
        """Every batch family's outputs for ``tasks`` (Label Studio task dicts) by row, with
        what ranking needs besides: the one batch path of ``/predict``, pre-annotation and
        re-ranking. ``strategy`` decides a classified task's uncertainty (the score it is
        written with). Images load a chunk at a time, so a whole project's never sit in
        memory at once; those not started by ``deadline`` (a ``time.monotonic()`` value)
        fail as ``time-budget``. A family without a model for its controls is left out (an
        unavailable one is logged: its error is in /health)."""
        batch = self.batch(tasks, deadline)
        found = []
        for family in self.runtime.batch_families():
            controls = parsed.for_family(family.kind)
            scores = family.score_batch(batch, controls, project, strategy) if controls else None
            if scores is not None:
                found.append(scores)
        return BatchScores(found, batch.failures)

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
        segmenter = self.runtime.sam.segmenter()
        started = time.perf_counter()
        lookup = embed_image(self.runtime, url, task_id(task))
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
        if not self.runtime.clipseg.configured():
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
            model = self.runtime.clipseg.model()
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
            batch = self.batch(tasks, deadline)
            for loaded in batch.chunks(key, DETECT_CHUNK):
                for i, item in loaded:
                    image, source = self.runtime.clipseg.image_activations(
                        model, item.sha256, item.rgb())
                    self.metrics.clipseg_activations.labels(source=source).inc()
                    probability = model.probabilities(image, prompts, background)
                    found = text_outputs(group, label_maps(group, prompts, probability),
                                         image.image_size, self._text_settings(), threshold,
                                         self._refiner(tasks[i], key, group))
                    out[i] = combine_outputs([out[i], found])
            self._tasks_failed(tasks, batch.failures)
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
        model = self.runtime.clipseg.model()
        key = controls[0].value_key
        item = self.batch(tasks).fetch(tasks[0], key)
        if not isinstance(item, TaskImage):
            raise BadRequest(f"task {task_id(tasks[0])}: {item[1]}")
        image, source = self.runtime.clipseg.image_activations(model, item.sha256, item.rgb())
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
        if not wanted or not self.runtime.sam.configured():
            return None
        url = task["data"][key]
        row_task_id = task_id(task)

        def refine(xyxy: np.ndarray) -> list[tuple[np.ndarray, float]]:
            segmenter = self.runtime.sam.segmenter()
            lookup = embed_image(self.runtime, url, row_task_id)
            self.metrics.sam_embeddings.labels(source=lookup.source).inc()
            found = [segmenter.segment(lookup.embedding,
                                       SamPrompt(np.zeros((0, 2)), np.zeros(0, bool), box))
                     for box in xyxy]
            return [(f.mask, f.score) for f in found]

        return refine

    def _tasks_failed(self, tasks: Sequence[Any], failures: dict[int, list[Failure]]) -> None:
        for row, reasons in failures.items():
            for reason, message in reasons:
                self.metrics.task_errors.labels(reason=reason).inc()
                log.warning("predict: task %s gets no prediction from this model: %s",
                            task_id(tasks[row]), message)
