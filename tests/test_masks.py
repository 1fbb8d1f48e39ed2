"""Masks to Label Studio geometry: polygons (simplified outlines) and brush regions."""

from __future__ import annotations

import numpy as np

from ml_backend.labelstudio.label_config import parse_label_config
from ml_backend.labelstudio.masks import mask_to_polygons
from ml_backend.labelstudio.results import Mask, output_regions
from ml_backend.labelstudio.rle import rle_to_mask

CONFIG = """<View><Image name="image" value="$image"/>
  <BrushLabels name="brush" toName="image"><Label value="Cell"/></BrushLabels>
  <PolygonLabels name="poly" toName="image"><Label value="Cell"/></PolygonLabels>
</View>"""


def two_squares() -> np.ndarray:
    mask = np.zeros((100, 200), dtype=bool)
    mask[10:60, 20:90] = True  # 50 x 70
    mask[70:90, 150:170] = True  # 20 x 20
    mask[95, 5] = True  # a speck: under 1 % of the largest component
    return mask


def test_polygons_are_the_components_largest_first_without_specks() -> None:
    big, small = mask_to_polygons(two_squares(), tolerance_px=1.0)
    assert len(big) == 4 and len(small) == 4  # a rectangle needs only its corners
    np.testing.assert_array_equal(big.min(axis=0), [20, 10])
    np.testing.assert_array_equal(big.max(axis=0), [89, 59])
    np.testing.assert_array_equal(small.min(axis=0), [150, 70])
    assert mask_to_polygons(np.zeros((5, 5), dtype=bool), 1.0) == []


def test_tolerance_trades_vertices_for_fidelity() -> None:
    yy, xx = np.mgrid[:200, :200]
    disc = (yy - 100) ** 2 + (xx - 100) ** 2 < 80 ** 2
    fine, = mask_to_polygons(disc, tolerance_px=0.5)
    coarse, = mask_to_polygons(disc, tolerance_px=4.0)
    assert len(coarse) < len(fine)
    radius = np.hypot(*(coarse - 100).T)
    assert np.all(np.abs(radius - 80) < 5)


def test_mask_regions_in_percent_for_both_control_kinds() -> None:
    brush, poly = parse_label_config(CONFIG).controls
    mask = two_squares()
    (region,) = output_regions(Mask(brush, "Cell", mask, 0.87))
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Cell"]
    decoded = rle_to_mask(np.asarray(region["value"]["rle"]), 100, 200)
    np.testing.assert_array_equal(decoded > 0, mask)
    assert region["score"] == 0.87 and region["original_width"] == 200
    polygons = output_regions(Mask(poly, "Cell", mask, 0.87))
    assert [r["id"] for r in polygons] == ["poly-0", "poly-1"]
    points = np.array(polygons[0]["value"]["points"])
    np.testing.assert_allclose(points.min(axis=0), [10.0, 10.0])  # x 20/200, y 10/100
    assert polygons[0]["value"]["closed"] is True
    assert output_regions(Mask(brush, "Cell", np.zeros((4, 4), dtype=bool), 0.5)) == []
