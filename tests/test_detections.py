"""Box conversions on exact cases, label mapping, and per-image detection uncertainty."""

from __future__ import annotations

import numpy as np
import pytest

from ml_backend.core.detections import (
    Detections,
    label_map,
    ls_rect_to_xyxy,
    xyxy_to_ls_rect,
    xyxy_to_yolo,
)
from ml_backend.learning.selection import detection_uncertainty


@pytest.mark.parametrize("width, height, xyxy, rect", [
    # Landscape, portrait and square images: percent is per axis.
    (640, 480, [64, 48, 320, 240], {"x": 10, "y": 10, "width": 40, "height": 40}),
    (480, 640, [48, 64, 240, 320], {"x": 10, "y": 10, "width": 40, "height": 40}),
    (1000, 250, [0, 0, 1000, 250], {"x": 0, "y": 0, "width": 100, "height": 100}),
    (300, 300, [150, 75, 225, 300], {"x": 50, "y": 25, "width": 25, "height": 75}),
])
def test_pixel_box_to_label_studio_and_back(width, height, xyxy, rect) -> None:
    value = xyxy_to_ls_rect(xyxy, width, height)
    assert value == pytest.approx({**rect, "rotation": 0.0})
    np.testing.assert_allclose(ls_rect_to_xyxy(value, width, height), xyxy)


def test_boxes_are_clipped_to_the_image() -> None:
    value = xyxy_to_ls_rect([-20, 10, 120, 60], 100, 50)
    assert value == pytest.approx({"x": 0, "y": 20, "width": 100, "height": 80, "rotation": 0})
    np.testing.assert_allclose(
        ls_rect_to_xyxy({"x": 90, "y": 90, "width": 30, "height": 30}, 200, 100),
        [180, 90, 200, 100])


def test_rotated_rectangle_becomes_its_bounding_box() -> None:
    # 40x20 px box at (100, 100) turned 90° clockwise about its top-left corner: it now
    # hangs down and to the left of the pivot.
    value = {"x": 25, "y": 50, "width": 10, "height": 10, "rotation": 90}  # on 400x200
    np.testing.assert_allclose(ls_rect_to_xyxy(value, 400, 200), [80, 100, 100, 140],
                               atol=1e-9)
    value45 = {"x": 25, "y": 50, "width": 10, "height": 10, "rotation": 45}
    x1, y1, x2, y2 = ls_rect_to_xyxy(value45, 400, 200)
    r = np.sqrt(0.5)
    np.testing.assert_allclose([x1, y1, x2, y2],
                               [100 - 20 * r, 100, 100 + 40 * r, 100 + 40 * r + 20 * r])


def test_yolo_format_is_normalised_centre_and_size() -> None:
    rows = xyxy_to_yolo(np.array([[64, 48, 320, 240], [0, 0, 640, 480]]), 640, 480)
    np.testing.assert_allclose(rows, [[0.3, 0.3, 0.4, 0.4], [0.5, 0.5, 1.0, 1.0]])


def test_bad_sizes_and_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="positive"):
        xyxy_to_ls_rect([0, 0, 1, 1], 0, 10)
    with pytest.raises(ValueError, match="xyxy"):
        Detections(np.zeros((2, 4)), ("a",), np.zeros(1), 10, 10)


def test_label_map_uses_predicted_values_then_exact_names() -> None:
    labels = ("Vehicle", "person", "Dog")
    attrs = {"Vehicle": {"predicted_values": "car, truck,bus"}}
    classes = ["person", "car", "truck", "bicycle", "dog"]
    assert label_map(labels, attrs, classes) == {"car": "Vehicle", "truck": "Vehicle",
                                                 "person": "person"}
    # "bus" is listed but not a model class; "Dog" ≠ "dog"; bicycle maps to nothing.


def test_detection_uncertainty_on_hand_made_detections() -> None:
    images = [
        np.array([0.99, 0.97]),        # sure of everything
        np.array([0.95, 0.5, 0.6]),    # one coin flip among confident boxes
        np.array([0.3, 0.2]),          # nothing confident
        np.array([]),                  # nothing at all
        np.array([0.9, 0.7, 0.6, 0.55]),
    ]
    u = detection_uncertainty(images, k=2)
    np.testing.assert_allclose(u, [
        (0.02 + 0.06) / 2, (1.0 + 0.8) / 2, 1.0, 1.0, (0.9 + 0.8) / 2])
    assert np.argsort(-u, kind="stable")[:2].tolist() == [2, 3]
    with pytest.raises(ValueError):
        detection_uncertainty(images, k=0)
