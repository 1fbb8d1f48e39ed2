"""The job kinds by name, their typed requests, and the one place their coalescing keys are
spelt.

A job's key names its kind and project: while a job with that key waits in the queue, further
submissions with the same key coalesce into it (see :mod:`ml_backend.jobs.queues`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any, TypeVar

R = TypeVar("R", bound="JobRequest")


class JobName(str, Enum):
    """Every background job kind. A ``str`` enum: it crosses Redis as its plain value."""

    TRAIN = "train"  # classifier update from the project's labels
    EMBED = "embed"  # classifier embeddings of imported tasks
    RERANK = "rerank"  # re-score unlabeled tasks, write the queue to Label Studio
    TRAIN_DETECTOR = "train_detector"  # YOLO fine-tune in a child process
    SAM_EMBED = "sam_embed"  # SAM image embeddings ahead of clicks
    PREANNOTATE = "preannotate"  # plan a whole-project pre-annotation
    PREANNOTATE_CHUNK = "preannotate_chunk"  # predict and write one chunk of it
    EXPORT = "export"  # write a training-ready data set of the project's labels
    QUALITY = "quality"  # label-quality scores and the find-similar index after training

    # The plain value wherever a name is printed (logs, metric labels, /jobs), on every
    # Python version (3.11 and 3.12 format str-mixin enums differently).
    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


def job_key(name: JobName | str, project: int, part: int | None = None) -> str:
    """The coalescing key of job kind ``name`` for ``project`` (and one ``part`` of it, such
    as a pre-annotation chunk named by its first task id)."""
    key = f"{JobName(name).value}:{int(project)}"
    return key if part is None else f"{key}:{int(part)}"


class JobRequest:
    """What one job kind is asked to do: a frozen dataclass of JSON-able fields. It crosses a
    queue (a thread's or Redis) as the plain dict :meth:`as_payload` makes, and is rebuilt,
    checked, by :meth:`from_payload` before the job runs."""

    @classmethod
    def from_payload(cls: type[R], payload: Mapping[str, Any]) -> R:
        if not isinstance(payload, Mapping):
            raise TypeError(f"{cls.__name__}: expected a mapping, got {type(payload).__name__}")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(payload) - known)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {unknown}; known: {sorted(known)}")
        try:
            return cls(**payload)
        except TypeError as exc:  # a required field is missing
            raise ValueError(f"{cls.__name__}: {exc}") from None

    def as_payload(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


def _project_id(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"project must be a non-negative integer id, got {value!r}")
    return value


class TrainMode(str, Enum):
    INCREMENTAL = "incremental"  # an annotation event: refit warm, quickly
    FULL = "full"  # START_TRAINING or /train: choose regularisation anew, fine-tune


@dataclass(frozen=True)
class TrainRequest(JobRequest):
    """``train`` (classifier) and ``train_detector``: learn from the project's labels."""

    project: int
    mode: str = TrainMode.INCREMENTAL.value
    label_config: str | None = None
    # The webhook's own task and annotation: applied on top of a recent full read instead
    # of re-reading every label (FULL_SYNC_INTERVAL_S).
    task: dict[str, Any] | None = None
    annotation: dict[str, Any] | None = None
    # Label Studio's legacy /train call sends the annotated tasks themselves.
    export: list[dict[str, Any]] | None = None

    def __post_init__(self) -> None:
        _project_id(self.project)
        TrainMode(self.mode)  # ValueError naming the value

    @property
    def full(self) -> bool:
        return self.mode == TrainMode.FULL.value


@dataclass(frozen=True)
class EmbedRequest(JobRequest):
    """``embed``: classifier embeddings of imported tasks, then (``rerank``) a re-rank."""

    project: int
    tasks: list[dict[str, Any]] = field(default_factory=list)
    label_config: str = ""
    rerank: bool = False

    def __post_init__(self) -> None:
        _project_id(self.project)


@dataclass(frozen=True)
class RerankRequest(JobRequest):
    """``rerank``: re-score the unlabeled tasks (``force``: even if nothing changed)."""

    project: int
    force: bool = False

    def __post_init__(self) -> None:
        _project_id(self.project)


@dataclass(frozen=True)
class SamEmbedRequest(JobRequest):
    """``sam_embed``: encode task images ahead of clicks. ``requests`` newest first, each
    ``{"at": unix time, "keys": [task data keys], "tasks": [{"id", "data"}]}``."""

    project: int
    requests: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        _project_id(self.project)


@dataclass(frozen=True)
class PreannotateRequest(JobRequest):
    """``preannotate``: plan the chunks of a whole-project pre-annotation."""

    project: int

    def __post_init__(self) -> None:
        _project_id(self.project)


@dataclass(frozen=True)
class PreannotateChunkRequest(JobRequest):
    """``preannotate_chunk``: predict and write ``task_ids`` (planned for ``version``).
    ``timeout_s`` and ``retries`` are also RQ's limits for the job."""

    project: int
    version: str
    task_ids: list[int]
    label_config: str
    timeout_s: int = 600
    retries: int = 0

    def __post_init__(self) -> None:
        _project_id(self.project)
        if not self.task_ids:
            raise ValueError("PreannotateChunkRequest: task_ids is empty")


@dataclass(frozen=True)
class ExportRequest(JobRequest):
    """``export``: the project's human labels as a data set in ``format`` under ``out_dir``
    (an absolute path the service resolved), split by ``split`` (train, val, test ratios)."""

    project: int
    format: str
    out_dir: str
    split: list[float] = field(default_factory=lambda: [0.8, 0.1, 0.1])
    augment: int = 0
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        _project_id(self.project)


@dataclass(frozen=True)
class QualityRequest(JobRequest):
    """``quality``: score every annotated task's label (out-of-fold, cleanlab), write the
    scores to Label Studio and rebuild the project's find-similar index."""

    project: int

    def __post_init__(self) -> None:
        _project_id(self.project)
