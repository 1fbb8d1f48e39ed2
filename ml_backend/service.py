"""The backend's behaviour per protocol endpoint, with no HTTP in it.

Each public method takes a parsed JSON body and returns a JSON-able dict, or raises a
:mod:`ml_backend.core.errors` category that the HTTP layer maps to a status code.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ml_backend.core.errors import BackendError, BadRequest, LabelStudioUnavailable, NotFound
from ml_backend.export.run import check_output, options_from_body, project_spec
from ml_backend.jobs.compute_threads import on_short_lived_thread
from ml_backend.jobs.kinds import (
    EmbedRequest,
    ExportRequest,
    JobName,
    PreannotateRequest,
    RerankRequest,
    TrainMode,
    TrainRequest,
    job_key,
)
from ml_backend.jobs.queues import JobQueue
from ml_backend.labelstudio.api import LabelStudioAPI
from ml_backend.labelstudio.label_config import ModelFamily, parse_label_config
from ml_backend.models.clipseg.prompts import typed_prompt
from ml_backend.models.sam.precompute import precompute_request, prompt_keys
from ml_backend.models.sam.prompts import click_request
from ml_backend.pipeline.preannotation import preannotation_state
from ml_backend.pipeline.prediction import predictor_for
from ml_backend.pipeline.ranking import STATE_TOP, ranking_state
from ml_backend.quality.like_correction import LAST_CORRECTION_STATE, choice_corrections
from ml_backend.quality.similar import MIN_INDEXED, load_index, similar_to
from ml_backend.reporting.savings import project_report
from ml_backend.runtime import Runtime

log = logging.getLogger(__name__)

# Where POST /export writes: MODEL_DIR/exports/<out> (server-side state, like the models;
# a request cannot name a folder outside it).
EXPORTS = "exports"
MAX_SIMILAR = 100  # the most neighbours one GET /similar returns
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
    def __init__(self, runtime: Runtime, jobs: JobQueue) -> None:
        self.runtime = runtime
        self.jobs = jobs
        self.metrics = runtime.metrics
        self._configs: dict[int, str] = {}
        self.predictor = predictor_for(runtime)
        self.started_at = time.time()

    # --- GET /health, GET /versions --------------------------------------------------------
    def health(self) -> dict[str, Any]:
        failing = self.runtime.store.failing_jobs()
        models = self.runtime.status()
        detector = models[ModelFamily.DETECTOR.value]
        fine_tunes = {str(p): jobs[JobName.TRAIN_DETECTOR] for p, jobs in failing.items()
                      if JobName.TRAIN_DETECTOR in jobs}
        if fine_tunes:
            detector["training_failures"] = fine_tunes
            detector["training_warning"] = "; ".join(
                f"project {p}: fine-tune failed {f['failures_in_a_row']}× in a row, last: "
                f"{f['last_error'][:200]}" for p, f in fine_tunes.items())
        return {
            "status": "UP",
            "model_class": "ActiveLearningBackend",
            "models": models,
            "jobs": "rq" if self.runtime.settings.redis_url else "in-process",
            # Model versions that failed their checksums and were set aside, per project.
            "quarantined": {str(k): v for k, v in self.runtime.store.quarantined().items()},
            # Jobs whose latest runs failed, per project (a failing fine-tune, say).
            "failing_jobs": {str(k): v for k, v in failing.items()},
            # Where this process keeps models and caches (absolute; compare with workers').
            "storage": self.runtime.settings.paths(),
            "uptime_s": round(time.time() - self.started_at, 1),
        }

    def recent_jobs(self) -> list[dict[str, Any]]:
        return self.jobs.recent()

    def versions(self, project: Any = None) -> dict[str, Any]:
        """All versions, or ``project``'s (an id or Label Studio's ``"<id>.<ts>"``)."""
        project = parse_project_id(project)
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
        self.runtime.label_studio("re-ranking")
        job = self.jobs.submit(JobName.RERANK, RerankRequest(project, force=True),
                               key=job_key(JobName.RERANK, project))
        return {"status": "queued", "job": job}

    # --- POST/GET /preannotate/<project> ---------------------------------------------------
    def preannotate(self, project: int) -> dict[str, Any]:
        self.runtime.label_studio("pre-annotation")
        job = self.jobs.submit(JobName.PREANNOTATE, PreannotateRequest(project),
                               key=job_key(JobName.PREANNOTATE, project))
        return {"status": "queued", "job": job}

    def preannotation(self, project: int) -> dict[str, Any]:
        state = preannotation_state(self.runtime, project)
        if state is None:
            raise NotFound(f"project {project} has not been pre-annotated yet")
        return state

    # --- GET /report/<project> -------------------------------------------------------------
    def report(self, project: int) -> dict[str, Any]:
        """The project's savings report, read from Label Studio now (NotFound: no such
        project; LabelStudioUnavailable: Label Studio cannot be reached)."""
        api = self.runtime.label_studio("the savings report")
        return project_report(api, project).as_dict()

    # --- POST /export/<project> ------------------------------------------------------------
    def export(self, project: int, body: Any) -> dict[str, Any]:
        """Queue an export job (its progress shows in /jobs). What can be checked at once is:
        NotFound (no such project), NothingToExport (422), OutputNotEmpty (409)."""
        options = options_from_body(project, body, self.runtime.settings.model_dir / EXPORTS)
        project_spec(self.runtime.label_studio("export"), project, options.format)
        check_output(options.out_dir, options.overwrite)
        job = self.jobs.submit(JobName.EXPORT, ExportRequest(
            project, options.format.value, str(options.out_dir), list(options.split),
            options.augment, options.seed, options.overwrite))
        return {"status": "queued", "job": job, "out_dir": str(options.out_dir)}

    # --- GET /similar/<project>/<task> -----------------------------------------------------
    def similar(self, project: int, task: int, k: int = 10) -> dict[str, Any]:
        """The ``k`` tasks of ``project`` nearest to ``task`` by the classifier backbone's
        embedding (exact cosine search over the index the quality job keeps). NotFound for an
        unknown project, or a task not in it; a project without an index yet, or a task
        added since it was built, answers with a status that says so."""
        if not 1 <= k <= MAX_SIMILAR:
            raise BadRequest(f"k must be between 1 and {MAX_SIMILAR}, got {k}")
        api = self.runtime.label_studio("find similar")
        api.existing_label_config(project)  # NotFound: no such project
        index = load_index(self.runtime.store, project)
        row = index.row(task) if index is not None else None
        if row is None and api.task_project(task) != project:
            raise NotFound(f"project {project} has no task {task}")
        answer: dict[str, Any] = {"project": project, "task": task, "k": k, "similar": []}
        if index is None or len(index.task_ids) < MIN_INDEXED:
            return {**answer, "status": "not-enough-embeddings",
                    "detail": "no find-similar index yet: it is built after the project's "
                              "first classifier training (or by ml-backend dedupe)"}
        if row is None:
            return {**answer, "status": "not-indexed", "version": index.version,
                    "detail": f"task {task} came after the index was built; it is "
                              "indexed after the next training"}
        similar = similar_to(index, row, k)
        return {**answer, "status": "ok", "version": index.version,
                "indexed": len(index.task_ids), "similar": similar,
                "neighbors": self._fill_neighbors(api, task, [s["task"] for s in similar])}

    @staticmethod
    def _fill_neighbors(api: LabelStudioAPI, task: int, neighbors: list[int]) -> dict[str, Any]:
        """Write the answer into the ``neighbors`` of the task's predictions, where Label
        Studio keeps a task's nearest tasks (exported with the predictions; its UI shows
        none). Best effort: the answer stands when the write fails, and says so."""
        try:
            records = api.task_predictions(task)
            for record in records:
                if record.get("neighbors") != neighbors:
                    api.set_prediction_neighbors(int(record["id"]), neighbors)
        except (LabelStudioUnavailable, NotFound) as exc:  # e.g. replaced by a re-rank
            log.warning("task %s: neighbors not written: %s", task, exc)
            return {"status": "not-written", "detail": str(exc)}
        if not records:
            return {"status": "no-prediction",
                    "detail": "the task has no prediction to keep them (an annotated task "
                              "loses its prediction when a newer version re-ranks the queue)"}
        return {"status": "written", "predictions": [int(r["id"]) for r in records]}

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
        # Model work on a thread of its own: see compute_threads.
        return on_short_lived_thread("predict", lambda: self._predict(body))

    def _predict(self, body: Any) -> dict[str, Any]:
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
            return {"results": [self.predictor.segment(tasks, click, project)]}
        typed = typed_prompt(params.get("context"), parsed) if parsed.text_inputs else None
        if typed is not None:
            return {"results": [self.predictor.text_prompt(tasks, typed, parsed,
                                                            params["context"], project)]}
        if parsed.prompts and project is not None:
            self._precompute_sam(project, config, tasks)
        return {"results": self.predictor.predict_tasks(
            tasks, parsed, project, self.runtime.settings.request_time_budget_s)}

    def _precompute_sam(self, project: int, config: str, tasks: list[Any]) -> None:
        """Tasks being pre-annotated or opened get their SAM embeddings ahead of the first
        click (queued first: they are what an annotator is about to see)."""
        if not self.runtime.sam.configured():
            return
        request = precompute_request(project, tasks, prompt_keys(config),
                                     self.runtime.settings.sam_precompute_max_tasks)
        if request is not None:
            self.jobs.submit(JobName.SAM_EMBED, request, key=job_key(JobName.SAM_EMBED, project))

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
        request = TrainRequest(project, TrainMode.FULL.value, label_config=config, export=export)
        jobs = [self.jobs.submit(name, request, key=job_key(name, project))
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
            job = self.jobs.submit(JobName.EMBED, EmbedRequest(
                project, body["tasks"], label_config=config, rerank=True))
            return {"status": "queued", "action": action, "job": job}
        # The event's own task and annotation let training skip a full re-read when recent.
        event = action in {"ANNOTATION_CREATED", "ANNOTATION_UPDATED"}
        task, annotation = body.get("task"), body.get("annotation")
        if event and isinstance(annotation, dict):
            self._keep_correction(project, annotation)
        mode = TrainMode.FULL if action == "START_TRAINING" else TrainMode.INCREMENTAL
        request = TrainRequest(
            project, mode.value,
            label_config=config if isinstance(config, str) else None,
            task=task if event and isinstance(task, dict) else None,
            annotation=annotation if event and isinstance(annotation, dict) else None)
        jobs = [self.jobs.submit(name, request, key=job_key(name, project))
                for name in self._trainers(project)]
        job = jobs[0]
        annotation = body.get("annotation")
        if isinstance(annotation, dict) and annotation.get("was_cancelled") \
                and self.runtime.settings.rerank_after_training and self.runtime.ls_api:
            # A skip changes no label (training will find nothing new) but the skipped task
            # must leave the head of the queue.
            self.jobs.submit(JobName.RERANK, RerankRequest(project, force=True),
                             key=job_key(JobName.RERANK, project))
        return {"status": "queued", "action": action, "job": job, "jobs": jobs}

    def _keep_correction(self, project: int, annotation: dict[str, Any]) -> None:
        """Keep an annotation that changed a predicted choice as the project's last
        correction: the quality job after the training it triggers marks the unlabeled
        tasks like it (:mod:`ml_backend.quality.like_correction`)."""
        corrections = choice_corrections(annotation)
        if corrections:
            self.runtime.store.write_state(project, LAST_CORRECTION_STATE, {
                "corrections": [c.as_state() for c in corrections]})

    def _trainers(self, project: int) -> list[JobName]:
        """The training jobs a project's config needs; both when its config is unknown (the
        jobs read it from Label Studio and skip what does not apply)."""
        config = self._configs.get(project)
        try:
            parsed = parse_label_config(config) if config else None
        except BackendError:
            parsed = None
        names = []
        if parsed is None or parsed.for_family(ModelFamily.CLASSIFIER):
            names.append(JobName.TRAIN)
        if parsed is None or parsed.for_family(ModelFamily.DETECTOR):
            names.append(JobName.TRAIN_DETECTOR)
        return names or [JobName.TRAIN]
