"""Where the data-quality marks live in Label Studio, and the Data Manager tabs that show them.

Label Studio 1.23's Data Manager sorts and filters on task fields, on aggregates of the
project's *current* model version's predictions (``predictions_score`` averages only those,
so a prediction under a separate ``label-quality`` version could never be sorted on), and on
keys of the task's ``data`` (numerically, when the tab declares the column a Number). Task
``meta`` and a prediction's ``mislabeling`` are stored and exported but are no Data Manager
column. So the marks are keys added to the task's ``data``: sortable, filterable, exported,
and read back by the backend from the same export it ranks from (checked against the real
Label Studio: tests/integration/test_quality.py). Nothing else in ``data`` changes.
"""

from __future__ import annotations

from typing import Any

QUALITY_KEY = "label_quality"  # in [0, 1]; low: the label is suspect
DUPLICATE_KEY = "near_duplicate_of"  # the id of the task kept for its group
LABEL_ERRORS_VIEW = "Suspected label errors"
DUPLICATES_VIEW = "Near-duplicates"
LIKE_CORRECTION_KEY = "like_correction_of"  # the id of the corrected task
LIKE_SIMILARITY_KEY = "like_correction_similarity"  # cosine to it, in [-1, 1]
LIKE_CORRECTION_VIEW = "Like the last correction"


def label_errors_view() -> dict[str, Any]:
    """Annotated tasks, lowest label quality (likeliest error) first."""
    column = f"tasks:data.{QUALITY_KEY}"
    return {"filters": {"conjunction": "and", "items": [
                {"filter": "filter:tasks:total_annotations", "operator": "greater",
                 "type": "Number", "value": 0},
                {"filter": f"filter:{column}", "operator": "greater_or_equal",
                 "type": "Number", "value": 0}]},
            "ordering": [column], "columnsDisplayType": {column: "Number"}}


def duplicates_view() -> dict[str, Any]:
    """Tasks marked as a near-duplicate of another, by the task they duplicate."""
    column = f"tasks:data.{DUPLICATE_KEY}"
    return {"filters": {"conjunction": "and", "items": [
                {"filter": f"filter:{column}", "operator": "greater", "type": "Number",
                 "value": 0}]},
            "ordering": [column], "columnsDisplayType": {column: "Number"}}


def like_correction_view() -> dict[str, Any]:
    """Unlabeled tasks the model labels like the last correction, most similar first."""
    marked, similarity = f"tasks:data.{LIKE_CORRECTION_KEY}", f"tasks:data.{LIKE_SIMILARITY_KEY}"
    return {"filters": {"conjunction": "and", "items": [
                {"filter": "filter:tasks:total_annotations", "operator": "equal",
                 "type": "Number", "value": 0},
                {"filter": f"filter:{marked}", "operator": "greater", "type": "Number",
                 "value": 0}]},
            "ordering": [f"-{similarity}"],
            "columnsDisplayType": {marked: "Number", similarity: "Number"}}


def is_marked_duplicate(task: dict[str, Any]) -> bool:
    """Whether a task (with ``data``) carries a near-duplicate mark."""
    data = task.get("data")
    return isinstance(data, dict) and data.get(DUPLICATE_KEY) not in (None, "")
