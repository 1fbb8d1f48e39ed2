"""Detection pieces without a model: annotations to training boxes, class mapping with
thresholds and uncertainty, result regions, the YOLO dataset layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml_backend.core.detections import Detections
from ml_backend.core.errors import ModelUnavailable
from ml_backend.labelstudio.label_config import ModelFamily, parse_label_config
from ml_backend.labelstudio.results import Boxes, Classification, combine_outputs, task_prediction
from ml_backend.models.detector.boxes import control_boxes, score_threshold
from ml_backend.models.detector.model import DetectionSample, locate_detector, write_yolo_dataset
from ml_backend.models.detector.training import boxes_of

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="bbox" toName="image" model_score_threshold="0.5">
    <Label value="Vehicle" predicted_values="car,truck"/>
    <Label value="person"/>
  </RectangleLabels>
  <Choices name="scene" toName="image"><Choice value="day"/><Choice value="night"/></Choices>
</View>"""


def _control():
    (control,) = parse_label_config(CONFIG).for_family(ModelFamily.DETECTOR)
    return control


def _region(x: float, y: float, w: float, h: float, label: str, rotation: float = 0.0,
            name: str = "bbox") -> dict:
    return {"from_name": name, "to_name": "image", "type": "rectanglelabels",
            "value": {"x": x, "y": y, "width": w, "height": h, "rotation": rotation,
                      "rectanglelabels": [label]}}


def test_annotation_boxes_in_pixels_on_a_wide_image() -> None:
    xyxy, classes = boxes_of(_control(), [_region(10, 20, 50, 40, "person"),
                                          _region(0, 0, 100, 100, "Vehicle")], 200, 100)
    assert xyxy.tolist() == [[20.0, 20.0, 120.0, 60.0], [0.0, 0.0, 200.0, 100.0]]
    assert classes.tolist() == [1, 0]


def test_annotation_boxes_rotated_unknown_and_other_controls() -> None:
    control = _control()
    # 90° clockwise about the top-left corner of a 100 x 300 image: the box swings left.
    xyxy, _ = boxes_of(control, [_region(50, 10, 20, 10, "person", rotation=90)], 100, 300)
    assert np.allclose(xyxy, [[20.0, 30.0, 50.0, 50.0]])
    xyxy, classes = boxes_of(control, [_region(10, 10, 5, 5, "not-a-label")], 100, 100)
    assert xyxy.shape == (0, 4) and classes.shape == (0,)
    # An annotation of only another control says nothing about boxes; an empty one says
    # "no objects".
    choice = {"from_name": "scene", "to_name": "image", "type": "choices",
              "value": {"choices": ["day"]}}
    assert boxes_of(control, [choice], 100, 100) is None
    xyxy, classes = boxes_of(control, [], 100, 100)
    assert xyxy.shape == (0, 4) and classes.shape == (0,)


def test_control_boxes_maps_thresholds_and_keeps_weak_boxes_in_the_uncertainty() -> None:
    raw = Detections(np.array([[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 2, 2], [3, 3, 9, 9]],
                              dtype=float), ("car", "truck", "person", "dog"),
                     np.array([0.9, 0.3, 0.8, 0.6]), 40, 20)
    boxes = control_boxes(_control(), raw, threshold=0.5)
    assert boxes.detections.labels == ("Vehicle", "person")  # truck too weak, dog unmapped
    assert boxes.detections.scores.tolist() == [0.9, 0.8]
    # Per-box 1 - |2s - 1| over the mapped boxes 0.9, 0.3, 0.8 → 0.2, 0.6, 0.4; top-3 mean.
    assert boxes.uncertainty == pytest.approx(0.4)


def test_an_image_without_a_confident_box_is_fully_uncertain() -> None:
    raw = Detections(np.array([[0, 0, 10, 10]], dtype=float), ("car",), np.array([0.2]),
                     40, 20)
    boxes = control_boxes(_control(), raw, threshold=0.5)
    assert len(boxes.detections) == 0 and boxes.uncertainty == 1.0


def test_score_threshold_from_the_control_else_the_default() -> None:
    control = _control()
    assert score_threshold(control, 0.25) == 0.5
    (plain,) = parse_label_config(CONFIG.replace(' model_score_threshold="0.5"', "")
                                  ).for_family(ModelFamily.DETECTOR)
    assert score_threshold(plain, 0.25) == 0.25
    (bad,) = parse_label_config(CONFIG.replace('"0.5"', '"lots"')).for_family(
        ModelFamily.DETECTOR)
    assert score_threshold(bad, 0.25) == 0.25


def test_box_regions_and_a_combined_task_prediction() -> None:
    control = _control()
    det = Detections(np.array([[40.0, 20.0, 240.0, 120.0]]), ("person",), np.array([0.75]),
                     400, 200)
    (choices,) = parse_label_config(CONFIG).for_family(ModelFamily.CLASSIFIER)
    classification = Classification(choices, np.array([0.7, 0.3]))
    combined = combine_outputs([([Boxes(control, det, 0.5)], 0.5),
                                ([classification], 0.6), None])
    assert combined is not None
    prediction = task_prediction(combined[0], "yolov8n-v2-x", 1.0 - combined[1])
    assert prediction["score"] == pytest.approx(0.4)  # the least certain family decides
    box, choice = prediction["result"]
    assert box == {
        "id": "bbox-0", "from_name": "bbox", "to_name": "image", "type": "rectanglelabels",
        "original_width": 400, "original_height": 200, "image_rotation": 0,
        "value": {"x": 10.0, "y": 10.0, "width": 50.0, "height": 50.0, "rotation": 0.0,
                  "rectanglelabels": ["person"]},
        "score": 0.75}
    assert choice["value"] == {"choices": ["day"]}
    assert combine_outputs([None, None]) is None


def test_yolo_dataset_layout(tmp_path: Path) -> None:
    sample = DetectionSample("task-3", b"png-bytes", ".png",
                             np.array([[20.0, 20.0, 120.0, 60.0], [5.0, 5.0, 5.0, 9.0]]),
                             np.array([1, 0]), 200, 100)
    empty = DetectionSample("task-4", b"png", ".png", np.zeros((0, 4)),
                            np.zeros(0, dtype=int), 50, 50)
    data = write_yolo_dataset(tmp_path, [sample, empty], ["it's", "b"], [False, True])
    assert (tmp_path / "images/train/task-3.png").read_bytes() == b"png-bytes"
    # Centre (70, 40) and size (100, 40) of a 200 x 100 image; the zero-width box is dropped.
    assert (tmp_path / "labels/train/task-3.txt").read_text() == \
        "1 0.350000 0.400000 0.500000 0.400000"
    assert (tmp_path / "labels/val/task-4.txt").read_text() == ""
    assert "names: {0: 'it''s', 1: 'b'}" in data.read_text()


def test_locating_the_base_detector(tmp_path: Path) -> None:
    assert not locate_detector(None, "yolov8n.yaml").trained
    with pytest.raises(ModelUnavailable, match="does not exist"):
        locate_detector(str(tmp_path / "missing.pt"), "yolov8n.yaml")
    with pytest.raises(ModelUnavailable, match="architecture config"):
        locate_detector(None, "yolov8n.pt")
    checkpoint = tmp_path / "mine.pt"
    checkpoint.write_bytes(b"weights")
    found = locate_detector(str(checkpoint), "yolov8n.yaml")
    assert found.trained and found.source == "checkpoint" and found.spec == str(checkpoint)
