"""The job kinds by name, and the one place their coalescing keys are spelt.

A job's key names its kind and project: while a job with that key waits in the queue, further
submissions with the same key coalesce into it (see :mod:`ml_backend.jobs.queues`).
"""

from __future__ import annotations

from enum import Enum


class JobName(str, Enum):
    """Every background job kind. A ``str`` enum: it crosses Redis as its plain value."""

    TRAIN = "train"  # classifier update from the project's labels
    EMBED = "embed"  # classifier embeddings of imported tasks
    RERANK = "rerank"  # re-score unlabeled tasks, write the queue to Label Studio
    TRAIN_DETECTOR = "train_detector"  # YOLO fine-tune in a child process
    SAM_EMBED = "sam_embed"  # SAM image embeddings ahead of clicks
    PREANNOTATE = "preannotate"  # plan a whole-project pre-annotation
    PREANNOTATE_CHUNK = "preannotate_chunk"  # predict and write one chunk of it

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
