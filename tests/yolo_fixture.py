"""A tiny detector trained by the tests themselves (no downloaded weights): YOLOv8n from its
architecture config, one epoch on 8 synthetic shapes images at 64 px, through the same
child process the fine-tune job uses."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from ml_backend.devtools.datasets import SHAPE_CLASSES, shape_scenes
from ml_backend.models.detector.model import DetectionSample, write_yolo_dataset
from ml_backend.models.detector.training import FineTuneSpec, fine_tune

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


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


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
