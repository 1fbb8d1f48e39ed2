"""The savings report of one project: what annotators did with each model version's
pre-labels, what that saved under the cost model, how good each version was on work it had
not trained on, and Label Studio's own annotator timing (pure functions over typed records).

Label Studio's JSON export is the input (:func:`records_from_export`): tasks with their
``annotations`` (``result``, ``lead_time``, ``parent_prediction``, ``created_at``,
``was_cancelled``) and ``predictions`` (``id``, ``model_version``, ``result``,
``created_at``).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Protocol

from ml_backend.reporting.effort import DEFAULT_COSTS, CostModel
from ml_backend.reporting.regions import Comparison, compare_results


@dataclass(frozen=True)
class PredictionRecord:
    id: int | None
    model_version: str
    result: list[dict[str, Any]]
    created_at: str


@dataclass(frozen=True)
class AnnotationRecord:
    """One submitted (or skipped) annotation and the pre-label it started from, if any."""

    task: int
    id: int
    result: list[dict[str, Any]]
    created_at: str
    lead_time_s: float | None
    cancelled: bool
    prediction: PredictionRecord | None


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _prediction(record: Any) -> PredictionRecord | None:
    if not isinstance(record, Mapping) or not isinstance(record.get("result"), list):
        return None
    pid = record.get("id")
    return PredictionRecord(id=int(pid) if isinstance(pid, int) else None,
                            model_version=str(record.get("model_version") or ""),
                            result=list(record["result"]),
                            created_at=str(record.get("created_at") or ""))


def parent_prediction(annotation: Mapping[str, Any], predictions: Sequence[PredictionRecord]
                      ) -> PredictionRecord | None:
    """The pre-label an annotation started from: its ``parent_prediction`` (an id, or the
    record itself), else the task's latest prediction created before the annotation (when
    both times are known), else None."""
    parent = annotation.get("parent_prediction")
    if isinstance(parent, Mapping):
        return _prediction(parent)
    if isinstance(parent, int) and not isinstance(parent, bool):
        for prediction in predictions:
            if prediction.id == parent:
                return prediction
        return _prediction(annotation.get("prediction"))  # the parent's own record, if sent
    created = _time(annotation.get("created_at"))
    if created is None:
        return None
    earlier = [(t, p) for p in predictions if (t := _time(p.created_at)) and t <= created]
    return max(earlier, key=lambda tp: (tp[0], tp[1].id or 0))[1] if earlier else None


def records_from_export(tasks: Iterable[Any]) -> list[AnnotationRecord]:
    """Label Studio's JSON export → one record per annotation (skipped ones included)."""
    out = []
    for task in tasks:
        if not isinstance(task, Mapping) or not isinstance(task.get("id"), int):
            continue
        predictions = [p for p in map(_prediction, task.get("predictions") or []) if p]
        for annotation in task.get("annotations") or []:
            if not isinstance(annotation, Mapping) or not isinstance(annotation.get("id"), int):
                continue
            lead = annotation.get("lead_time")
            out.append(AnnotationRecord(
                task=int(task["id"]), id=int(annotation["id"]),
                result=[r for r in annotation.get("result") or [] if isinstance(r, Mapping)],
                created_at=str(annotation.get("created_at") or ""),
                lead_time_s=float(lead) if isinstance(lead, int | float)
                and not isinstance(lead, bool) and lead >= 0 else None,
                cancelled=bool(annotation.get("was_cancelled")),
                prediction=parent_prediction(annotation, predictions)))
    return out


@dataclass(frozen=True)
class Timing:
    """Label Studio's ``lead_time`` (seconds the annotation was open) of a group."""

    annotations: int
    mean_s: float | None
    median_s: float | None

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Timing:
        if not seconds:
            return cls(0, None, None)
        return cls(len(seconds), round(statistics.fmean(seconds), 2),
                   round(statistics.median(seconds), 2))


@dataclass(frozen=True)
class VersionReport:
    """One model version's pre-labels and what became of them; ``model_version`` is None
    for the annotations made without a pre-label.

    ``quality`` is measured on annotations made from this version's pre-labels: they were
    created after the version was trained, so it never saw them (held out in time). The
    annotator saw the pre-label, so it leans towards accepting (anchoring).
    """

    model_version: str | None
    annotations: int
    untouched: int
    accepted: int
    edited: int
    class_changed: int
    deleted: int
    added: int
    mean_edited_iou: float | None
    manual_s: float
    fixing_s: float
    saved_s: float
    quality: dict[str, float | None]


def _ratio(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def version_report(version: str | None, comparisons: Sequence[Comparison]) -> VersionReport:
    total = Comparison()
    for comparison in comparisons:
        total += comparison
    ious = total.edited_ious
    return VersionReport(
        model_version=version, annotations=len(comparisons),
        untouched=sum(c.untouched for c in comparisons), accepted=total.accepted,
        edited=total.edited, class_changed=total.class_changed, deleted=total.deleted,
        added=total.added,
        mean_edited_iou=round(statistics.fmean(ious), 4) if ious else None,
        manual_s=round(total.manual_s, 2), fixing_s=round(total.fixing_s, 2),
        saved_s=round(total.manual_s - total.fixing_s, 2),
        quality={} if version is None else {
            "class_accuracy": _ratio(total.classes_right, total.classes_predicted),
            "region_precision": _ratio(total.regions_right, total.regions_predicted),
            "region_recall": _ratio(total.regions_right, total.regions_true),
            "untouched_share": _ratio(sum(c.untouched for c in comparisons),
                                      len(comparisons)),
        })


@dataclass(frozen=True)
class SavingsReport:
    project: int
    annotations: int
    skipped: int
    versions: list[VersionReport]
    without_prelabel: VersionReport
    lead_time: dict[str, Timing]
    saved_s: float
    cost_model: CostModel = DEFAULT_COSTS

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def savings_report(project: int, records: Sequence[AnnotationRecord],
                   costs: CostModel = DEFAULT_COSTS) -> SavingsReport:
    """Aggregate ``records`` per model version (ordered by their first pre-label's time).
    Skipped annotations are only counted; annotations without a pre-label are priced as
    drawn by hand (they save nothing) and kept apart."""
    by_version: dict[str, list[Comparison]] = {}
    first_seen: dict[str, str] = {}
    manual: list[Comparison] = []
    timing: dict[str, list[float]] = {"with_prelabel": [], "without_prelabel": []}
    submitted = [r for r in records if not r.cancelled]
    for record in submitted:
        prediction = record.prediction
        comparison = compare_results(prediction.result if prediction else None, record.result,
                                     costs)
        if prediction is None:
            manual.append(comparison)
        else:
            by_version.setdefault(prediction.model_version, []).append(comparison)
            seen = first_seen.get(prediction.model_version)
            if seen is None or prediction.created_at < seen:
                first_seen[prediction.model_version] = prediction.created_at
        if record.lead_time_s is not None:
            timing["with_prelabel" if prediction else "without_prelabel"].append(
                record.lead_time_s)
    versions = [version_report(v, by_version[v])
                for v in sorted(by_version, key=lambda v: (first_seen[v], v))]
    return SavingsReport(
        project=project, annotations=len(submitted), skipped=len(records) - len(submitted),
        versions=versions, without_prelabel=version_report(None, manual),
        lead_time={k: Timing.of(v) for k, v in timing.items()},
        saved_s=round(sum(v.saved_s for v in versions), 2), cost_model=costs)


class ExportSource(Protocol):
    """Where the report reads a project from (``labelstudio.api.LabelStudioAPI``)."""

    def annotated_export(self, project: int) -> list[dict[str, Any]]: ...


def project_report(source: ExportSource, project: int, costs: CostModel = DEFAULT_COSTS
                   ) -> SavingsReport:
    """Read ``project``'s annotated tasks and report on them."""
    return savings_report(project, records_from_export(source.annotated_export(project)), costs)


COLUMNS = ("model_version", "annotations", "untouched", "accepted", "edited", "class_changed",
           "deleted", "added", "mean_edited_iou", "saved_s")


def report_table(report: SavingsReport) -> str:
    """The report as a plain-text table, one row per version (and one without pre-labels)."""
    rows = [[str(v.model_version or "(no pre-label)"), *(
        "-" if getattr(v, c) is None else str(getattr(v, c)) for c in COLUMNS[1:])]
        for v in [*report.versions, report.without_prelabel] if v.annotations]
    header = list(COLUMNS)
    widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
    lines = ["  ".join(x.ljust(w) for x, w in zip(r, widths, strict=True)).rstrip()
             for r in [header, *rows]]
    quality = [f"{v.model_version}: " + ", ".join(
        f"{k} {'-' if q is None else q}" for k, q in v.quality.items()) for v in report.versions]
    timing = [f"lead_time {k}: n={t.annotations} mean={t.mean_s} s median={t.median_s} s"
              for k, t in report.lead_time.items()]
    head = (f"project {report.project}: {report.annotations} annotations "
            f"({report.skipped} skipped), {report.saved_s} s saved")
    return "\n".join([head, "", *lines, "", "quality on annotations made after each version "
                      "(held out in time):", *quality, "", *timing])


def plot_report(report: SavingsReport, path: str) -> None:
    """A PNG of the per-version counts (stacked) and the seconds saved."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [v for v in [*report.versions, report.without_prelabel] if v.annotations]
    names = [str(v.model_version or "(no pre-label)") for v in rows]
    fig, (counts, saved) = plt.subplots(1, 2, figsize=(max(8.0, 2.2 * len(rows) + 4), 4.5))
    bottom = [0] * len(rows)
    colours = {"accepted": "tab:green", "edited": "tab:orange", "deleted": "tab:red",
               "added": "tab:blue"}
    for what, colour in colours.items():
        values = [getattr(v, what) for v in rows]
        counts.bar(names, values, bottom=bottom, label=what, color=colour)
        bottom = [b + x for b, x in zip(bottom, values, strict=True)]
    counts.set_title("regions per model version")
    counts.legend()
    saved.bar(names, [v.saved_s for v in rows], color="tab:gray")
    saved.axhline(0, color="black", linewidth=0.8)
    saved.set_title("annotator seconds saved (cost model)")
    for axis in (counts, saved):
        axis.tick_params(axis="x", labelrotation=20)
    fig.suptitle(f"project {report.project}: {report.annotations} annotations")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
