"""A tiny detector trained by the tests themselves (no downloaded weights): YOLOv8n from its
architecture config, one epoch on 8 synthetic shapes images at 64 px, through the same
child process the fine-tune job uses."""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ml_backend.core.detections import xyxy_to_ls_rect
from ml_backend.devtools.datasets import SHAPE_CLASSES, shape_scenes
from ml_backend.models.detector.model import DetectionSample, write_yolo_dataset
from ml_backend.models.detector.training import FineTuneSpec, fine_tune

from conftest import png_bytes

SIZE = 64
# Every box shown (threshold 0): the tiny model is unsure of all of them.
SHAPES_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="shape" toName="image" model_score_threshold="0.0">
    <Label value="circle"/><Label value="square"/><Label value="triangle"/>
  </RectangleLabels>
</View>"""
MIXED_CONFIG = SHAPES_CONFIG.replace("</View>", """  <Choices name="busy" toName="image">
    <Choice value="one"/><Choice value="many"/>
  </Choices>
</View>""")


def train_tiny_yolo(work: Path, name: str = "tiny-yolov8n.pt") -> Path:
    scenes = shape_scenes(8, seed=3)
    samples = [DetectionSample(f"s{i}", png_bytes(s.pixels), ".png", s.xyxy,
                               np.array([SHAPE_CLASSES.index(lab) for lab in s.labels]),
                               s.pixels.shape[1], s.pixels.shape[0])
               for i, s in enumerate(scenes)]
    data = write_yolo_dataset(work / "data", samples, SHAPE_CLASSES, [i >= 6 for i in range(8)])
    result = fine_tune(FineTuneSpec(start="yolov8n.yaml", data_yaml=str(data),
                                    out_dir=str(work / "runs"), config_dir=str(work / "cfg"),
                                    epochs=1, image_size=SIZE, batch=4, device="cpu",
                                    warm=False), work)
    checkpoint = work / name
    shutil.copyfile(result["weights"], checkpoint)
    return checkpoint


def hosted_shape_tasks(image_host: Any, ids: Iterable[int], project: int,
                       busy_choice: bool = False) -> list[dict[str, Any]]:
    """Tasks ``ids`` annotated with their scenes' exact boxes (``shape_scenes(seed=11)``), their
    images served by ``image_host``; with ``busy_choice`` also a "busy" Choices answer
    ("many" above two shapes, else "one") for configs that have one."""
    ids = list(ids)
    tasks = []
    for task_id, scene in zip(ids, shape_scenes(len(ids), seed=11), strict=True):
        path = f"/data/upload/{project}/shape{task_id}.png"
        image_host.files[path] = png_bytes(scene.pixels)
        height, width = scene.pixels.shape[:2]
        result = [{"from_name": "shape", "to_name": "image", "type": "rectanglelabels",
                   "value": {**xyxy_to_ls_rect(box, width, height), "rectanglelabels": [lab]}}
                  for box, lab in zip(scene.xyxy, scene.labels, strict=True)]
        if busy_choice:
            result.append({"from_name": "busy", "to_name": "image", "type": "choices",
                           "value": {"choices": ["many" if len(scene.labels) > 2 else "one"]}})
        tasks.append({"id": task_id, "data": {"image": path}, "annotations": [{
            "id": task_id, "updated_at": "2026-01-01T00:00:00Z", "result": result}]})
    return tasks
