"""The backend's behaviour per protocol endpoint, with no HTTP in it.

Each public method takes a parsed JSON body and returns a JSON-able dict, or raises a
:mod:`ml_backend.errors` category that the HTTP layer maps to a status code.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from typing import Any

import numpy as np

from .adapters.sam import SamPrompt
from .detecting import DETECT_CHUNK, boxes_outputs, detect_images, unmapped_controls
from .errors import (
    BackendError,
    BadRequest,
    ImageError,
    LabelStudioUnavailable,
    ModelUnavailable,
    NotFound,
)
from .images import LoadedImage
from .jobs import JobQueue
from .label_config import ControlSpec, ModelFamily, ParsedConfig, parse_label_config
from .metrics import Metrics
from .reranking import STATE_TOP, ranking_state
from .results import (
    Mask,
    Output,
    classification_outputs,
    combine_outputs,
    empty_prediction,
    task_prediction,
)
from .runtime import ClassifierModel, Runtime
from .sam_precompute import JOB as SAM_EMBED_JOB
from .sam_precompute import embed_image, job_key, precompute_payload, prompt_keys
from .segmenting import ClickRequest, click_request
from .text_prompting import (
    TEXT_PROMPT_CONTROLS,
    Refiner,
    TextSettings,
    TypedPrompt,
    context_threshold,
    label_for_text,
    label_maps,
    label_prompt,
    text_outputs,
    typed_prompt,
)

log = logging.getLogger(__name__)

EMBED_CHUNK = 16
TaskOutputs = tuple[list[Output], float]  # one task's outputs and its uncertainty
TRAIN_ON = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED",
            "ANNOTATIONS_DELETED", "PROJECT_UPDATED"}


def parse_project_id(value: Any) -> int | None:
    """Label Studio sends ``"<id>.<created unix time>"`` to /setup and /predict, a record with
    ``id`` in webhooks, and sometimes a bare int."""
    if value is None or value == "":
        return None
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool):
        raise BadRequest(f"project must be an id, got {value!r}")
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str):
        head = value.split(".", 1)[0]
        if head.isascii() and head.isdigit():
            return int(head)
    raise BadRequest(f"project must look like '<id>.<timestamp>' or an integer id, "
                     f"got {value!r}")


def _require_dict(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest(f"{what} body must be a JSON object, got {type(body).__name__}")
    return body


class Backend:
    def __init__(self, runtime: Runtime, jobs: JobQueue, metrics: Metrics) -> None:
        self.runtime = runtime
        self.jobs = jobs
        self.metrics = metrics
        self._configs: dict[int, str] = {}
        self._io = ThreadPoolExecutor(max_workers=8, thread_name_prefix="image-io")
        self.started_at = time.time()

    # --- GET /health, GET /versions --------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return {
            "status": "UP",
            "model_class": "ActiveLearningBackend",
            "models": {ModelFamily.CLASSIFIER.value: self.runtime.classifier_status(),
                       ModelFamily.DETECTOR.value: self.runtime.detector_status(),
                       "sam": self.runtime.sam_status(),
                       ModelFamily.TEXT_SEGMENTER.value: self.runtime.clipseg_status()},
            "jobs": "rq" if self.runtime.settings.redis_url else "in-process",
            "uptime_s": round(time.time() - self.started_at, 1),
        }

    def versions(self, project: int | None = None) -> dict[str, Any]:
        store = self.runtime.store
        projects = [project] if project is not None else store.projects()
        names = [name for p in projects for name in reversed(store.versions(p))]
        return {"versions": [*names, self.runtime.untrained_version()]}

    # --- GET/POST /ranking/<project> --------------------------------------------------------
    def ranking(self, project: int, limit: int = 50) -> dict[str, Any]:
        state = ranking_state(self.runtime, project, max(0, min(limit, STATE_TOP)))
        if state is None:
            raise NotFound(f"project {project} has not been ranked yet (it needs a trained "
                           "model and LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY)")
        return state

    def rerank(self, project: int) -> dict[str, Any]:
        if self.runtime.ls_api is None:
            raise BadRequest("re-ranking writes to Label Studio: set LABEL_STUDIO_URL and "
                             "LABEL_STUDIO_API_KEY")
        job = self.jobs.submit("rerank", {"project": project, "force": True},
                               key=f"rerank:{project}")
        return {"status": "queued", "job": job}

    # --- POST /setup -------------------------------------------------------------------------
    def setup(self, body: Any) -> dict[str, Any]:
        body = _require_dict(body, "/setup")
        schema = body.get("schema")
        if not isinstance(schema, str) or not schema.strip():
            raise BadRequest("/setup needs 'schema': the project's label config XML")
        project = parse_project_id(body.get("project"))
        parsed = parse_label_config(schema)  # raises UnsupportedConfig with the reason
        if project is not None:
            self._configs[project] = schema
        if parsed.unserved:
            log.info("project %s: not served: %s", project, "; ".join(parsed.unserved))
        return {"model_version": self.runtime.model_version(project)}

    # --- POST /predict -----------------------------------------------------------------------
    def predict(self, body: Any) -> dict[str, Any]:
        body = _require_dict(body, "/predict")
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise BadRequest("/predict needs 'tasks': a list of Label Studio tasks")
        limit = self.runtime.settings.max_tasks_per_request
        if len(tasks) > limit:
            raise BadRequest(f"{len(tasks)} tasks in one request; the limit is {limit} "
                             "(MAX_TASKS_PER_REQUEST)")
        project = parse_project_id(body.get("project"))
        config = body.get("label_config") or (self._configs.get(project)
                                              if project is not None else None)
        if not isinstance(config, str):
            raise BadRequest("/predict needs 'label_config' (or a prior /setup of the project)")
        parsed = parse_label_config(config)
        params = body.get("params") if isinstance(body.get("params"), dict) else {}
        click = click_request(params.get("context"), parsed) if parsed.prompts else None
        if click is not None:
            return {"results": [self._segment(tasks, click, project)]}
        typed = typed_prompt(params.get("context"), parsed) if parsed.text_inputs else None
        if typed is not None:
            return {"results": [self._text_prompt(tasks, typed, parsed, params["context"],
                                                  project)]}
        if parsed.prompts and project is not None:
            self._precompute_sam(project, config, tasks)
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
        return {"results": results}

    def _segment(self, tasks: list[Any], click: ClickRequest, project: int | None
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

    # --- CLIPSeg: text-prompted boxes and masks ------------------------------------------
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
            pending = [self._io.submit(self._load, task, key) for task in tasks[:DETECT_CHUNK]]
            for i in range(len(tasks)):
                item = pending.pop(0).result()
                if i + DETECT_CHUNK < len(tasks):  # keep a few images loading ahead
                    pending.append(self._io.submit(self._load, tasks[i + DETECT_CHUNK], key))
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

    def _text_prompt(self, tasks: list[Any], typed: TypedPrompt, parsed: ParsedConfig,
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

    def _precompute_sam(self, project: int, config: str, tasks: list[Any]) -> None:
        """Tasks being pre-annotated or opened get their SAM embeddings ahead of the first
        click (queued first: they are what an annotator is about to see)."""
        if not self.runtime.sam_configured():
            return
        payload = precompute_payload(project, tasks, prompt_keys(config),
                                     self.runtime.settings.sam_precompute_max_tasks)
        if payload is not None:
            self.jobs.submit(SAM_EMBED_JOB, payload, key=job_key(project))

    def _classify(self, tasks: list[Any], controls: tuple[ControlSpec, ...],
                  model: ClassifierModel) -> list[TaskOutputs | None]:
        usable = [c for c in controls
                  if c.name in model.heads and model.heads[c.name].labels == c.labels]
        if len(usable) < len(controls):
            log.warning("predict: controls without a head for the current labels get no "
                        "prediction until the next training: %s",
                        [c.name for c in controls if c not in usable])
        keys = sorted({c.value_key for c in usable})
        futures = {self._io.submit(self._load, task, key): (i, key)
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
                return [self._io.submit(self._load, tasks[i], k) for i in rows]

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

    def _load(self, task: Any, key: str) -> LoadedImage | tuple[str, str]:
        """A task's image, or ``(reason, message)`` when it cannot be had."""
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

    # --- POST /train (only when Label Studio's start-training webhook flag is off) ----------
    def train(self, body: Any) -> dict[str, Any]:
        body = _require_dict(body, "/train")
        export = body.get("annotations")
        if not isinstance(export, list):
            raise BadRequest("/train needs 'annotations': the annotated tasks")
        project = parse_project_id(body.get("project"))
        if project is None:
            raise BadRequest("/train needs 'project'")
        config = body.get("label_config")
        if not isinstance(config, str):
            raise BadRequest("/train needs 'label_config'")
        parse_label_config(config)
        self._configs[project] = config
        jobs = [self.jobs.submit(name, {"project": project, "mode": "full", "export": export,
                                        "label_config": config}, key=f"{name}:{project}")
                for name in self._trainers(project)]
        return {"status": "queued", "job": jobs[0], "jobs": jobs}

    # --- POST /webhook -----------------------------------------------------------------------
    def webhook(self, body: Any) -> dict[str, Any]:
        body = _require_dict(body, "/webhook")
        action = body.get("action")
        if not isinstance(action, str):
            raise BadRequest("webhook body needs 'action'")
        self.metrics.webhooks.labels(action=action[:40]).inc()
        project_record = body.get("project") if isinstance(body.get("project"), dict) else {}
        project = parse_project_id(project_record) if project_record else None
        if project is None:
            for key in ("annotation", "task"):
                if isinstance(body.get(key), dict) and "project" in body[key]:
                    project = parse_project_id(body[key]["project"])
        if action not in TRAIN_ON | {"START_TRAINING", "TASKS_CREATED"}:
            return {"status": "ignored", "action": action}
        if project is None:
            raise BadRequest(f"{action} webhook carries no project id")
        config = project_record.get("label_config")
        if isinstance(config, str):
            self._configs[project] = config
        if action == "TASKS_CREATED":
            if not isinstance(config, str) or not isinstance(body.get("tasks"), list):
                return {"status": "ignored", "action": action}
            try:
                parsed = parse_label_config(config)
            except BackendError as exc:  # a project this backend cannot serve: nothing to do
                return {"status": "ignored", "action": action, "reason": str(exc)}
            if parsed.prompts:
                self._precompute_sam(project, config, body["tasks"])
            if not parsed.for_family(ModelFamily.CLASSIFIER) and not parsed.for_family(
                    ModelFamily.DETECTOR):
                return {"status": "queued", "action": action}
            # Embedding new tasks' images now makes their first /predict fast; the job then
            # re-ranks the queue so the new tasks take their place in it.
            job = self.jobs.submit("embed", {"project": project, "tasks": body["tasks"],
                                             "label_config": config, "rerank": True})
            return {"status": "queued", "action": action, "job": job}
        payload: dict[str, Any] = {"project": project,
                                   "mode": "full" if action == "START_TRAINING" else "incremental",
                                   "label_config": config if isinstance(config, str) else None}
        if action in {"ANNOTATION_CREATED", "ANNOTATION_UPDATED"}:
            # The event's own annotation lets training skip a full re-read when recent.
            for key in ("task", "annotation"):
                if isinstance(body.get(key), dict):
                    payload[key] = body[key]
        jobs = [self.jobs.submit(name, payload, key=f"{name}:{project}")
                for name in self._trainers(project)]
        job = jobs[0]
        annotation = body.get("annotation")
        if isinstance(annotation, dict) and annotation.get("was_cancelled") \
                and self.runtime.settings.rerank_after_training and self.runtime.ls_api:
            # A skip changes no label (training will find nothing new) but the skipped task
            # must leave the head of the queue.
            self.jobs.submit("rerank", {"project": project, "force": True},
                             key=f"rerank:{project}")
        return {"status": "queued", "action": action, "job": job, "jobs": jobs}

    def _trainers(self, project: int) -> list[str]:
        """The training jobs a project's config needs; both when its config is unknown (the
        jobs read it from Label Studio and skip what does not apply)."""
        config = self._configs.get(project)
        try:
            parsed = parse_label_config(config) if config else None
        except BackendError:
            parsed = None
        names = []
        if parsed is None or parsed.for_family(ModelFamily.CLASSIFIER):
            names.append("train")
        if parsed is None or parsed.for_family(ModelFamily.DETECTOR):
            names.append("train_detector")
        return names or ["train"]


def _task_id(task: Any) -> Any:
    return task.get("id") if isinstance(task, dict) else None

