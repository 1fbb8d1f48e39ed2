"""The synthetic shapes data set (exact boxes) and how detection configs reach their jobs."""

from __future__ import annotations

import numpy as np

from ml_backend.devtools.datasets import SHAPE_CLASSES, SHAPE_IMAGE_SIZES, shape_scenes
from ml_backend.jobs.registry import job_registry

from conftest import DIGITS_CONFIG

SHAPES_CONFIG = """<View><Image name="image" value="$image"/>
  <RectangleLabels name="shape" toName="image"><Label value="circle"/></RectangleLabels>
</View>"""


def test_shape_scenes_have_exact_separate_boxes_of_every_class() -> None:
    scenes = shape_scenes(30, seed=4)
    sizes = {(s.pixels.shape[1], s.pixels.shape[0]) for s in scenes}
    assert sizes == set(SHAPE_IMAGE_SIZES)
    assert {lab for s in scenes for lab in s.labels} == set(SHAPE_CLASSES)
    for scene in scenes:
        height, width = scene.pixels.shape[:2]
        assert 1 <= len(scene.labels) <= 5 and scene.xyxy.shape == (len(scene.labels), 4)
        assert (scene.xyxy[:, [0, 1]] >= 0).all()
        assert (scene.xyxy[:, 2] <= width).all() and (scene.xyxy[:, 3] <= height).all()
        for i, a in enumerate(scene.xyxy):
            # Between 10 % and 40 % of the short side, and apart from every other object.
            assert 0.05 * min(width, height) <= a[2] - a[0] <= 0.41 * min(width, height)
            for b in scene.xyxy[i + 1:]:
                assert a[0] > b[2] or a[2] < b[0] or a[1] > b[3] or a[3] < b[1]
    again = shape_scenes(30, seed=4)
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(scenes, again, strict=True))


def test_an_object_fills_its_box_centre_in_one_colour() -> None:
    for scene in shape_scenes(10, seed=5):
        for box, label in zip(scene.xyxy, scene.labels, strict=True):
            cx, cy = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
            if label == "triangle":  # the centre of the circumcircle is inside
                continue
            patch = scene.pixels[cy - 1:cy + 2, cx - 1:cx + 2].reshape(-1, 3)
            assert (patch == patch[0]).all()


def test_webhooks_start_the_trainers_the_config_needs(backend, monkeypatch) -> None:
    client, _, jobs = backend
    submitted: list[tuple[str, int]] = []
    monkeypatch.setattr(jobs, "submit", lambda name, request, key=None: (
        submitted.append((name, request.project)) or f"job-{len(submitted)}"))
    mixed = DIGITS_CONFIG.replace(
        "</View>", '<RectangleLabels name="shape" toName="image"><Label value="circle"/>'
        "</RectangleLabels></View>")
    cases = [(SHAPES_CONFIG, ["train_detector"]), (DIGITS_CONFIG, ["train"]),
             (mixed, ["train", "train_detector"])]
    for project, (config, expected) in enumerate(cases, start=40):
        submitted.clear()
        body = {"action": "PROJECT_UPDATED", "project": {"id": project, "label_config": config}}
        response = client.post("/webhook", json=body).get_json()
        assert [name for name, _ in submitted] == expected
        assert len(response["jobs"]) == len(expected)
    assert job_registry()["train_detector"].lane == "detector"
