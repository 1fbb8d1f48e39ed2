"""The product's job kinds: what each job runs, how coalesced payloads merge, its lane.

Wiring in one place (like SAM's ``build_sam``): the queues receive this registry, so
:mod:`ml_backend.jobs.queues` imports no domain module and domain modules may import the
queues' helpers (locks, keys) without a cycle. A new job kind is one entry here.
"""

from __future__ import annotations

from typing import Any

from ml_backend.export.run import export_job
from ml_backend.jobs.kinds import (
    EmbedRequest,
    ExportRequest,
    JobName,
    PreannotateChunkRequest,
    PreannotateRequest,
    QualityRequest,
    RerankRequest,
    SamEmbedRequest,
    TrainRequest,
)
from ml_backend.jobs.queues import InProcessQueue, JobKind, JobQueue, JobRecord, Registry, RQQueue
from ml_backend.models.classifier.training import (
    merge_train_requests,
    precompute_embeddings,
    train_classifier,
)
from ml_backend.models.detector.training import train_detector_job
from ml_backend.models.sam.precompute import merge_precompute_requests, precompute_sam_job
from ml_backend.pipeline.preannotation import preannotate_chunk, preannotate_project
from ml_backend.pipeline.ranking import rerank_project
from ml_backend.quality.label_errors import quality_job
from ml_backend.runtime import Runtime


def _train(runtime: Runtime, request: TrainRequest) -> Any:
    return train_classifier(runtime, request).as_dict()


def merge_rerank_requests(queued: RerankRequest, new: RerankRequest) -> RerankRequest:
    return RerankRequest(new.project, force=queued.force or new.force)


def job_registry() -> Registry:
    return {
        JobName.TRAIN: JobKind(_train, TrainRequest, merge_train_requests),
        JobName.EMBED: JobKind(precompute_embeddings, EmbedRequest),
        # Re-ranking waits mostly on Label Studio's API: its own lane keeps it from
        # delaying the next training (annotation → new version stays fast).
        JobName.RERANK: JobKind(rerank_project, RerankRequest, merge_rerank_requests,
                                lane="ranking"),
        # A detector fine-tune takes minutes: its own lane keeps classifier updates (and
        # other projects' jobs) from queueing behind it.
        JobName.TRAIN_DETECTOR: JobKind(train_detector_job, TrainRequest, merge_train_requests,
                                        lane="detector"),
        # SAM encodes ahead of clicks: seconds each on a CPU, so apart from training.
        JobName.SAM_EMBED: JobKind(precompute_sam_job, SamEmbedRequest,
                                   merge_precompute_requests, lane="sam"),
        # Whole-project pre-annotation: a planner and its chunks, on their own lane so a
        # 100k-task project never delays training (and can get its own GPU workers).
        JobName.PREANNOTATE: JobKind(preannotate_project, PreannotateRequest, lane="predict"),
        JobName.PREANNOTATE_CHUNK: JobKind(preannotate_chunk, PreannotateChunkRequest,
                                           lane="predict"),
        # An export reads every image of a project: its own lane, so training never waits.
        JobName.EXPORT: JobKind(export_job, ExportRequest, lane="export"),
        # Label quality after a training: cross-validation and a write per changed task,
        # on its own lane so neither training nor the queue's re-rank waits for it.
        JobName.QUALITY: JobKind(quality_job, QualityRequest, lane="quality"),
    }


def make_queue(runtime: Runtime, on_done: Any = None) -> JobQueue:
    """The queue the settings ask for: Redis + RQ with ``REDIS_URL``, else in-process
    (``on_done(record: JobRecord)`` is called after each in-process job)."""
    registry = job_registry()
    if runtime.settings.redis_url:
        return RQQueue.from_url(runtime.settings.redis_url, registry)
    return InProcessQueue(runtime, registry, on_done=on_done)


__all__ = ["JobRecord", "job_registry", "make_queue", "merge_rerank_requests"]
