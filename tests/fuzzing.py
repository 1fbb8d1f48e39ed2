"""Property-based fuzzing of every HTTP endpoint: hypothesis strategies for request bodies
(shaped like Label Studio's, then broken in every field, plus arbitrary JSON and raw bytes),
and a runner that sends them through the Flask app and records any 5xx answer or exception.
Used by tests/test_fuzz.py and scripts/hardening_report.py."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parent.parent
CONFIGS = sorted((REPO / "labeling_configs").glob("*.xml"))
CONFIG_TEXTS = [path.read_text() for path in CONFIGS]
CONTROL_NAMES = ["image", "digit", "label", "bbox", "mask", "kp", "prompt", "threshold", "box",
                 "choice", "poly", "rect"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**63, max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.sampled_from(["", "1.1700000000", "abc", "-1", "1e309", "/data/upload/1/a.png",
                     "/data/local-files/?d=set1/img_1.png", "/data/local-files/?d=../../etc",
                     "s3://bucket/key.png", "http://169.254.169.254/latest/meta-data/",
                     "file:///etc/passwd", "gopher://127.0.0.1:6379/_INFO", "\x00", "☃" * 50]))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)),
    max_leaves=25)


def _maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly the plausible value, sometimes anything at all."""
    return st.one_of(strategy, strategy, strategy, json_values)


numbers = st.one_of(st.floats(min_value=-50, max_value=150), st.integers(-10, 200))
regions = st.fixed_dictionaries(
    {"from_name": _maybe(st.sampled_from(CONTROL_NAMES)), "to_name": _maybe(st.just("image")),
     "type": _maybe(st.sampled_from(["keypointlabels", "rectanglelabels", "textarea",
                                     "number", "choices", "brushlabels"])),
     "value": _maybe(st.fixed_dictionaries(
         {"x": _maybe(numbers), "y": _maybe(numbers), "width": _maybe(numbers),
          "height": _maybe(numbers), "number": _maybe(numbers),
          "text": _maybe(st.lists(st.text(max_size=400), max_size=3)),
          "keypointlabels": _maybe(st.lists(st.sampled_from(["Object", "Digit", "Cat"]),
                                            max_size=2)),
          "rectanglelabels": _maybe(st.lists(st.sampled_from(["Object", "Cat"]),
                                             max_size=2))}))},
    optional={"is_positive": _maybe(st.booleans()),
              "original_width": _maybe(st.integers(0, 5000)),
              "original_height": _maybe(st.integers(0, 5000))})
tasks = st.lists(st.fixed_dictionaries(
    {"id": _maybe(st.integers(-5, 10**6)),
     "data": _maybe(st.fixed_dictionaries({"image": scalars}))}), max_size=4)
label_configs = _maybe(st.sampled_from(CONFIG_TEXTS) | st.sampled_from(
    ["<View/>", "<View><Image name='image' value='$image'/></View>", "not xml", "<View>"]))
projects = _maybe(st.sampled_from(["1.1700000000", "2.1", "7", 7, 0, -1, "x.y", None]))

BODIES: dict[str, st.SearchStrategy[Any]] = {
    "/setup": _maybe(st.fixed_dictionaries({"project": projects, "schema": label_configs},
                                           optional={"hostname": scalars,
                                                     "access_token": scalars})),
    "/predict": _maybe(st.fixed_dictionaries(
        {"tasks": _maybe(tasks), "project": projects, "label_config": label_configs},
        optional={"params": _maybe(st.fixed_dictionaries(
            {"context": _maybe(st.fixed_dictionaries({"result": _maybe(
                st.lists(regions, max_size=4))}))}))})),
    "/webhook": _maybe(st.fixed_dictionaries(
        {"action": _maybe(st.sampled_from(["ANNOTATION_CREATED", "ANNOTATION_UPDATED",
                                           "ANNOTATIONS_DELETED", "START_TRAINING",
                                           "TASKS_CREATED", "PROJECT_UPDATED", "OTHER"]))},
        optional={"project": _maybe(st.fixed_dictionaries(
            {"id": projects, "label_config": label_configs})),
                  "tasks": _maybe(tasks), "annotation": json_values, "task": json_values})),
    "/train": _maybe(st.fixed_dictionaries(
        {"annotations": _maybe(st.lists(json_values, max_size=3)), "project": projects,
         "label_config": label_configs})),
}
PATHS = st.sampled_from([
    ("POST", "/setup"), ("POST", "/predict"), ("POST", "/webhook"), ("POST", "/train"),
    ("GET", "/health"), ("GET", "/versions"), ("GET", "/jobs"), ("GET", "/metrics"),
    ("GET", "/ranking/{n}"), ("POST", "/ranking/{n}"), ("GET", "/preannotate/{n}"),
    ("POST", "/preannotate/{n}"), ("GET", "/versions?project={q}"),
    ("GET", "/ranking/{n}?limit={q}"), ("DELETE", "/predict"), ("GET", "/nowhere"),
    ("GET", "/report/{n}"),
])
requests_ = st.tuples(
    PATHS, st.integers(0, 10**12), st.text(max_size=10),
    st.one_of(st.none(), st.binary(max_size=200),
              st.sampled_from([b"{", b"[]", b"null", b'"x"', b"\xff\xfe", b'{"a": NaN}'])),
    st.data())


@dataclass
class FuzzReport:
    requests: int = 0
    server_errors: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)


def fuzz(client: Any, examples: int, seed: int = 0) -> FuzzReport:
    """Send ``examples`` generated requests through the Flask test ``client``."""
    report = FuzzReport()

    @settings(max_examples=examples, deadline=None, database=None, derandomize=seed == 0,
              suppress_health_check=list(HealthCheck))
    @given(request=requests_)
    def one(request: tuple[Any, ...]) -> None:
        (method, path), number, query, raw, data = request
        path = path.format(n=number, q=query)
        kwargs: dict[str, Any] = {}
        if method == "POST":
            body_strategy = BODIES.get(path.split("?")[0])
            if raw is not None and data.draw(st.booleans()):
                kwargs = {"data": raw, "content_type": data.draw(st.sampled_from(
                    ["application/json", "text/plain", "application/x-www-form-urlencoded"]))}
            else:
                body = data.draw(body_strategy if body_strategy is not None else json_values)
                kwargs = {"data": json.dumps(body, allow_nan=True),
                          "content_type": "application/json"}
        report.requests += 1
        try:
            response = client.open(path, method=method, **kwargs)
        except Exception as exc:  # a crash: the app let an exception escape
            report.crashes.append(f"{method} {path}: {type(exc).__name__}: {exc}"[:300])
            return
        report.statuses[response.status_code] = report.statuses.get(response.status_code, 0) + 1
        if response.status_code >= 500:
            report.server_errors.append(
                f"{method} {path} -> {response.status_code}: "
                f"{response.get_data(as_text=True)[:200]} <- {kwargs.get('data', '')!s:.300}")

    one()
    return report

