"""`ml-backend export` and POST /export: splits (near-duplicates together, stratified,
seeded, stable across re-exports), augmentation on shape scenes with exact masks, each
format loaded by its trainer's own reader, and bad input, on projects made here (labels as
Label Studio's JSON export has them, images read by the backend's own loader from a local
folder)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from ml_backend.core.detections import xyxy_to_ls_rect
from ml_backend.core.errors import NotFound
from ml_backend.core.images import ImageLoader
from ml_backend.core.settings import Settings
from ml_backend.core.store import RANKING_STATE, ModelStore
from ml_backend.devtools.datasets import SHAPE_CLASSES, ShapeScene, shape_scenes
from ml_backend.export.augment import augment, train_transform
from ml_backend.export.balance import tasks_needed
from ml_backend.export.dataset import (
    ExportFormat,
    Instances,
    NothingToExport,
    OutputNotEmpty,
    Split,
    export_spec,
    mask_box,
)
from ml_backend.export.run import (
    SPLITS_STATE,
    ExportOptions,
    export_project,
    options_from_body,
)
from ml_backend.export.splits import (
    SplitCandidate,
    assign_splits,
    dhash,
    hamming,
    near_duplicate_groups,
    parse_ratios,
    split_candidates,
)
from ml_backend.labelstudio.label_config import parse_label_config
from ml_backend.labelstudio.rle import mask_to_rle

from app_fixture import backend_app

SHAPES_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <RectangleLabels name="shape" toName="image">
    <Label value="circle"/><Label value="square"/><Label value="triangle"/>
  </RectangleLabels>
  <BrushLabels name="paint" toName="image">
    <Label value="circle"/><Label value="square"/><Label value="triangle"/>
  </BrushLabels>
</View>"""
CLASSES_CONFIG = """<View>
  <Image name="image" value="$image"/>
  <Choices name="choice" toName="image">
    <Choice value="Cat"/><Choice value="Dog"/><Choice value="Bird"/>
  </Choices>
</View>"""


# --- a project made here ------------------------------------------------------------------
def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def shape_result(scene: ShapeScene, boxes: bool = True, brush: bool = True) -> list[dict]:
    height, width = scene.pixels.shape[:2]
    out = []
    for box, label, mask in zip(scene.xyxy, scene.labels, scene.masks, strict=True):
        if boxes:
            out.append({"from_name": "shape", "to_name": "image", "type": "rectanglelabels",
                        "original_width": width, "original_height": height,
                        "value": {**xyxy_to_ls_rect(box, width, height),
                                  "rectanglelabels": [label]}})
        if brush:
            out.append({"from_name": "paint", "to_name": "image", "type": "brushlabels",
                        "original_width": width, "original_height": height,
                        "value": {"format": "rle", "rle": mask_to_rle(mask.astype(np.uint8)),
                                  "brushlabels": [label]}})
    return out


def choice(label: str) -> list[dict]:
    return [{"from_name": "choice", "to_name": "image", "type": "choices",
             "value": {"choices": [label]}}]


def annotation(result: list[dict], id: int = 1, **extra: Any) -> dict[str, Any]:
    return {"id": id, "result": result, "updated_at": f"2025-01-01T00:00:{id:02d}Z", **extra}


class FakeProject:
    """Label Studio as the export reads it: a config, its JSON export of every task, and the
    prediction records."""

    def __init__(self, config: str, tasks: list[dict[str, Any]],
                 predictions: dict[int, list[dict]] | None = None) -> None:
        self.config, self.tasks, self.predictions = config, tasks, predictions or {}

    def existing_label_config(self, project: int) -> str:
        if project != 7:
            raise NotFound(f"Label Studio has no project {project}")
        return self.config

    def all_tasks_export(self, project: int) -> list[dict[str, Any]]:
        self.existing_label_config(project)
        return self.tasks

    def prediction_records(self, project: int) -> dict[int, list[dict]]:
        return self.predictions


@pytest.fixture
def image_root(tmp_path: Path) -> Path:
    root = tmp_path / "files"
    root.mkdir()
    return root


@pytest.fixture
def loader(image_root: Path, tmp_path: Path) -> ImageLoader:
    return ImageLoader(Settings(model_dir=tmp_path / "models", cache_dir=tmp_path / "cache",
                                local_files_document_root=image_root))


def put_image(root: Path, name: str, pixels: np.ndarray) -> str:
    (root / name).write_bytes(png(pixels))
    return f"/data/local-files/?d={name}"


def shapes_project(root: Path, count: int, seed: int = 0, first_id: int = 1,
                   **result_kw: bool) -> tuple[list[dict], list[ShapeScene]]:
    scenes = shape_scenes(count, seed)
    tasks = [{"id": first_id + i, "data": {"image": put_image(root, f"s{seed}_{i}.png",
                                                               s.pixels)},
              "annotations": [annotation(shape_result(s, **result_kw))]}
             for i, s in enumerate(scenes)]
    return tasks, scenes


def digit_like(rng: np.random.Generator, label: int) -> np.ndarray:
    """A 48 × 48 image of random blocks, distinct per call (no near-duplicates)."""
    coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((48, 48), Image.Resampling.NEAREST)
    return np.asarray(image).copy()


def classes_project(root: Path, labels: list[str], seed: int = 0, first_id: int = 1
                    ) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"id": first_id + i, "data": {"image": put_image(
        root, f"c{seed}_{i}.png", digit_like(rng, i))},
        "annotations": [annotation(choice(label))]} for i, label in enumerate(labels)]


def run_export(tmp_path: Path, loader: ImageLoader, project: FakeProject, fmt: str,
               out: str = "out", **kw: Any):
    options = ExportOptions.parse(7, fmt, tmp_path / out, **kw)
    return export_project(project, loader, ModelStore(tmp_path / "models"), options)


# --- splits --------------------------------------------------------------------------------
def test_dhash_sees_reencodes_and_shifts_as_near_duplicates() -> None:
    scenes = shape_scenes(6, seed=1)
    base = scenes[0].pixels
    jpeg = io.BytesIO()
    Image.fromarray(base).save(jpeg, format="JPEG", quality=70)
    reencoded = np.asarray(Image.open(io.BytesIO(jpeg.getvalue())).convert("RGB"))
    shifted = np.roll(base, 2, axis=1)
    h = dhash(base)
    assert hamming(h, dhash(reencoded)) <= 6 and hamming(h, dhash(shifted)) <= 6
    others = [hamming(h, dhash(s.pixels)) for s in scenes[1:]]
    assert min(others) > 6, others
    assert near_duplicate_groups([h, dhash(reencoded), dhash(scenes[1].pixels)]) == [0, 0, 2]


def candidates(n: int, group_size: int = 1, rare_every: int = 0) -> list[SplitCandidate]:
    return [SplitCandidate(i, i // group_size,
                           "rare" if rare_every and (i // group_size) % rare_every == 0
                           else "common") for i in range(n)]


def test_no_near_duplicate_group_spans_two_splits() -> None:
    found = assign_splits(candidates(300, group_size=3), (0.6, 0.2, 0.2), seed=0)
    by_group: dict[int, set[Split]] = {}
    for task, split in found.items():
        by_group.setdefault(task // 3, set()).add(split)
    assert all(len(s) == 1 for s in by_group.values())
    assert {s for v in by_group.values() for s in v} == {Split.TRAIN, Split.VAL, Split.TEST}


def test_splits_are_stratified_by_class() -> None:
    found = assign_splits(candidates(200, rare_every=10), (0.8, 0.1, 0.1), seed=3)
    rare = [found[i] for i in range(0, 200, 10)]
    common = [found[i] for i in range(200) if i % 10]
    assert [rare.count(s) for s in Split] == [16, 2, 2]
    assert [common.count(s) for s in Split] == [144, 18, 18]


def test_splits_are_deterministic_under_a_seed() -> None:
    items = candidates(100, rare_every=4)
    assert assign_splits(items, (0.7, 0.2, 0.1), seed=5) == \
        assign_splits(list(reversed(items)), (0.7, 0.2, 0.1), seed=5)
    assert assign_splits(items, (0.7, 0.2, 0.1), seed=5) != \
        assign_splits(items, (0.7, 0.2, 0.1), seed=6)


def test_new_tasks_keep_earlier_splits_and_restore_the_ratios() -> None:
    first = assign_splits(candidates(50), (0.8, 0.1, 0.1), seed=0)
    grown = candidates(150)
    second = assign_splits(grown, (0.8, 0.1, 0.1), seed=99, previous=first)
    assert all(second[t] is s for t, s in first.items())
    assert [list(second.values()).count(s) for s in Split] == [120, 15, 15]
    # A new near-duplicate of an earlier task joins that task's split.
    joined = assign_splits([SplitCandidate(0, 0, "common"), SplitCandidate(500, 0, "common")],
                           (0.8, 0.1, 0.1), seed=0, previous={0: Split.TEST})
    assert joined == {0: Split.TEST, 500: Split.TEST}


def test_a_group_is_stratified_by_its_rarest_class() -> None:
    made = split_candidates([1, 2, 3, 4], [["a"], ["a", "b"], ["a"], []],
                            [0, 1, 0xFFFFFFFF, 0xFFFFFFFF << 32])
    assert [c.stratum for c in made] == ["b", "b", "a", ""]
    assert made[0].group == made[1].group != made[2].group


@pytest.mark.parametrize(("text", "expected"), [
    ("0.8/0.1/0.1", (0.8, 0.1, 0.1)), ("8/1/1", (0.8, 0.1, 0.1)), ("1/1/0", (0.5, 0.5, 0.0)),
    ("0.8/0.2", ValueError), ("a/b/c", ValueError), ("0/1/1", ValueError),
    ("1/-1/1", ValueError)])
def test_split_ratios(text: str, expected: Any) -> None:
    if expected is ValueError:
        with pytest.raises(ValueError, match="split"):
            parse_ratios(text)
    else:
        assert parse_ratios(text) == pytest.approx(expected)


# --- augmentation ----------------------------------------------------------------------------
def test_augmented_boxes_stay_inside_and_tight_around_the_object() -> None:
    transform = train_transform()
    scenes = shape_scenes(6, seed=2)
    checked = 0
    for scene in scenes:
        height, width = scene.pixels.shape[:2]
        n = len(scene.labels)
        # Each object twice: once as a mask region, once as a rectangle only.
        instances = Instances(
            np.concatenate([scene.xyxy, scene.xyxy]), np.arange(2 * n) % 3,
            np.concatenate([scene.masks, np.zeros_like(scene.masks)]),
            np.array([True] * n + [False] * n))
        for seed in range(8):
            out = augment(scene.pixels, instances, transform, seed)
            assert out.pixels.shape == scene.pixels.shape
            inst = out.instances
            assert (inst.xyxy[:, [0, 2]] >= 0).all() and (inst.xyxy[:, [0, 2]] <= width).all()
            assert (inst.xyxy[:, [1, 3]] >= 0).all() and (inst.xyxy[:, [1, 3]] <= height).all()
            for k in np.flatnonzero(inst.has_mask):
                assert inst.masks[k].any()
                assert np.array_equal(inst.xyxy[k], mask_box(inst.masks[k]))  # tight
                checked += 1
            # A rectangle-only box still encloses one object's transformed mask.
            tight = [mask_box(inst.masks[j]) for j in np.flatnonzero(inst.has_mask)]
            for k in np.flatnonzero(~inst.has_mask):
                box = inst.xyxy[k]
                enclosed = [t for t in tight if (box[:2] <= t[:2] + 1.5).all()
                            and (box[2:] >= t[2:] - 1.5).all()]
                assert enclosed, (box, tight)
    assert checked > 50


# --- formats, loaded by their trainers' readers ------------------------------------------------
@pytest.fixture
def shapes(image_root: Path) -> FakeProject:
    tasks, _ = shapes_project(image_root, 24, seed=0)
    tasks.append({"id": 100, "data": {"image": tasks[0]["data"]["image"]},
                  "annotations": [annotation([], was_cancelled=True)]})
    tasks.append({"id": 101, "data": {"image": tasks[0]["data"]["image"]}, "annotations": []})
    tasks.append({"id": 102, "data": {"image": put_image(image_root, "empty.png",
                                                          np.full((40, 50, 3), 90, np.uint8))},
                  "annotations": [annotation([])]})
    return FakeProject(SHAPES_CONFIG, tasks)


def test_yolo_export_loads_with_ultralytics(tmp_path: Path, loader: ImageLoader,
                                            shapes: FakeProject) -> None:
    from ml_backend.models.detector.model import ultralytics_module

    outcome = run_export(tmp_path, loader, shapes, "yolo", split="0.6/0.2/0.2", augment=2)
    out = Path(outcome.out_dir)
    ultralytics_module(tmp_path / "yolo-config")
    from ultralytics.data.build import build_yolo_dataset
    from ultralytics.data.utils import check_det_dataset
    from ultralytics.utils import DEFAULT_CFG

    data = check_det_dataset(str(out / "data.yaml"))
    assert list(data["names"].values()) == list(SHAPE_CLASSES) and data["nc"] == 3
    dataset = build_yolo_dataset(DEFAULT_CFG, data["train"], 4, data, mode="val")
    labels = dataset.get_labels()
    report = json.loads((out / "report.json").read_text())
    originals = report["splits"]["train"]["images"]
    assert 12 <= originals <= 18  # 60 % of 25, as far as the strata allow
    assert len(labels) == outcome.written["train"] == 3 * originals  # + 2 copies each
    assert sum(len(x["cls"]) for x in labels) > 0
    assert (report["skipped_tasks"], report["unannotated_tasks"]) == (1, 1)
    assert report["images_without_labels"] == 1 and report["images"] == 25
    assert report["splits"]["train"]["augmented_copies"] == 2 * originals
    assert report["splits"]["val"]["augmented_copies"] == 0
    assert (out / "report.png").stat().st_size > 1000
    # Boxes agree with the masks they were drawn from (the export reads both controls;
    # YOLO takes the rectangles).
    first = (out / "labels" / "train").glob("task_*.txt")
    assert any(p.read_text().strip() for p in first)


def test_coco_export_loads_with_pycocotools(tmp_path: Path, loader: ImageLoader,
                                            shapes: FakeProject) -> None:
    from pycocotools.coco import COCO

    run_export(tmp_path, loader, shapes, "coco")
    coco = COCO(str(tmp_path / "out" / "annotations" / "instances_train.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(SHAPE_CLASSES)
    segmented = [a for a in coco.loadAnns(coco.getAnnIds()) if "segmentation" in a]
    boxes_only = [a for a in coco.loadAnns(coco.getAnnIds()) if "segmentation" not in a]
    assert segmented and boxes_only and len(segmented) == len(boxes_only)
    for ann in segmented[:10]:
        mask = coco.annToMask(ann)
        x, y, w, h = ann["bbox"]
        ys, xs = np.nonzero(mask)
        # The traced polygon runs through edge pixels' centres: within 2.5 px of the box.
        assert abs(xs.min() - x) <= 2.5 and abs(xs.max() + 1 - (x + w)) <= 2.5
        assert abs(ys.min() - y) <= 2.5 and abs(ys.max() + 1 - (y + h)) <= 2.5


def test_mask_export_has_class_index_pngs(tmp_path: Path, loader: ImageLoader,
                                          shapes: FakeProject) -> None:
    run_export(tmp_path, loader, shapes, "masks")
    out = tmp_path / "out"
    assert json.loads((out / "classes.json").read_text())["1"] == "circle"
    pngs = sorted((out / "masks").rglob("*.png"))
    assert len(pngs) == 25
    values: set[int] = set()
    for path in pngs:
        values |= set(np.unique(np.asarray(Image.open(path))).tolist())
        image = next((out / "images").rglob(path.name))
        assert Image.open(image).size == Image.open(path).size
    assert values == {0, 1, 2, 3}


def test_imagefolder_export_loads_with_torchvision(tmp_path: Path, loader: ImageLoader,
                                                   image_root: Path) -> None:
    from torchvision.datasets import ImageFolder

    labels = ["Cat"] * 20 + ["Dog"] * 12 + ["Bird"]
    project = FakeProject(CLASSES_CONFIG, classes_project(image_root, labels))
    outcome = run_export(tmp_path, loader, project, "imagefolder")
    train = ImageFolder(str(tmp_path / "out" / "train"), allow_empty=True)
    assert sorted(train.classes) == ["Bird", "Cat", "Dog"] and len(train) == \
        outcome.written["train"]
    report = outcome.report
    [warning] = report["warnings"]
    # Bird: 1 of 33 images; 5 % needs 1 more (2/34 = 5.9 %).
    assert warning["class"] == "Bird" and warning["tasks_needed"] == 1
    assert "not been ranked" in warning["next_tasks_source"] or not warning["next_tasks"]


def test_rare_classes_name_tasks_from_the_ranked_queue(tmp_path: Path, loader: ImageLoader,
                                                       image_root: Path) -> None:
    tasks = classes_project(image_root, ["Cat"] * 40 + ["Dog"])
    tasks += [{"id": 200 + i, "data": {"image": "/data/local-files/?d=none.png"},
               "annotations": []} for i in range(5)]
    predictions = {200 + i: [{"id": i, "created_at": "2025", "result": choice(
        "Dog" if i % 2 else "Cat")}] for i in range(5)}
    store = ModelStore(tmp_path / "models")
    store.write_state(7, RANKING_STATE, {"version": "v3", "top": [
        {"task": t} for t in (204, 203, 202, 201, 200)]})
    options = ExportOptions.parse(7, "imagefolder", tmp_path / "out")
    outcome = export_project(FakeProject(CLASSES_CONFIG, tasks, predictions), loader, store,
                             options)
    warnings = {w["class"]: w for w in outcome.report["warnings"]}
    assert sorted(warnings) == ["Bird", "Dog"]  # Bird has no image at all
    warning = warnings["Dog"]
    assert warning["tasks_needed"] == 2 and warnings["Bird"]["next_tasks"] == []
    assert warning["next_tasks"] == [203, 201]
    assert "ranked queue (model v3)" in warning["next_tasks_source"]


def test_reexport_after_new_labels_keeps_every_earlier_split(
        tmp_path: Path, loader: ImageLoader, image_root: Path) -> None:
    tasks, _ = shapes_project(image_root, 20, seed=0)
    first = run_export(tmp_path, loader, FakeProject(SHAPES_CONFIG, tasks), "yolo", out="a")
    before = json.loads((tmp_path / "a" / "export.json").read_text())["splits"]
    more, _ = shapes_project(image_root, 20, seed=1, first_id=50)
    run_export(tmp_path, loader, FakeProject(SHAPES_CONFIG, tasks + more), "coco", out="b",
               seed=4)
    after = json.loads((tmp_path / "b" / "export.json").read_text())["splits"]
    for split, ids in before.items():
        assert set(ids) <= set(after[split])
    assert sum(map(len, after.values())) == 40 and sum(first.written.values()) == 20
    state = ModelStore(tmp_path / "models").read_state(7, SPLITS_STATE)
    assert len(state["tasks"]) == 40


def test_duplicate_images_share_a_split(tmp_path: Path, loader: ImageLoader,
                                        image_root: Path) -> None:
    tasks, scenes = shapes_project(image_root, 12, seed=0)
    dupes = [{**t, "id": 300 + i} for i, t in enumerate(tasks)]  # the same files again
    run_export(tmp_path, loader, FakeProject(SHAPES_CONFIG, tasks + dupes), "yolo",
               split="0.5/0.25/0.25")
    splits = json.loads((tmp_path / "out" / "export.json").read_text())["splits"]
    where = {t: s for s, ids in splits.items() for t in ids}
    assert all(where[t["id"]] == where[300 + i] for i, t in enumerate(tasks))
    assert len(set(where.values())) == 3


def test_the_human_annotation_counts_never_the_prediction(
        tmp_path: Path, loader: ImageLoader, image_root: Path) -> None:
    tasks = classes_project(image_root, ["Cat", "Dog"])
    tasks[0]["predictions"] = [{"result": choice("Bird")}]
    tasks[1]["annotations"] = [annotation(choice("Bird"), id=1, parent_prediction=3),
                               annotation(choice("Cat"), id=2, was_cancelled=True)]
    outcome = run_export(tmp_path, loader, FakeProject(CLASSES_CONFIG, tasks), "imagefolder",
                         split="1/0/0")
    assert sorted(p.parent.name for p in (tmp_path / "out" / "train").rglob("*.png")) == \
        ["Bird", "Cat"]
    assert outcome.written == {"train": 2, "val": 0, "test": 0}


# --- bad input -------------------------------------------------------------------------------
def test_bad_input_is_refused_before_anything_is_written(
        tmp_path: Path, loader: ImageLoader, shapes: FakeProject) -> None:
    with pytest.raises(NotFound, match="no project 8"):
        export_project(shapes, loader, ModelStore(tmp_path / "m"),
                       ExportOptions.parse(8, "yolo", tmp_path / "x"))
    with pytest.raises(NothingToExport, match="needs Choices"):
        run_export(tmp_path, loader, shapes, "imagefolder")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    with pytest.raises(OutputNotEmpty, match="not empty"):
        run_export(tmp_path, loader, shapes, "yolo", out="full")
    with pytest.raises(OutputNotEmpty, match="no earlier export"):
        run_export(tmp_path, loader, shapes, "yolo", out="full", overwrite=True)
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep"
    run_export(tmp_path, loader, shapes, "masks", out="again")
    run_export(tmp_path, loader, shapes, "yolo", out="again", overwrite=True)
    assert (tmp_path / "again" / "data.yaml").is_file()
    assert not (tmp_path / "again" / "masks").exists()


@pytest.mark.parametrize(("body", "says"), [
    ({}, "needs 'format'"), ({"format": "voc"}, "unknown export format"),
    ({"format": "yolo", "out": "/etc"}, "relative"), ({"format": "yolo", "out": "../x"}, ".."),
    ({"format": "yolo", "split": "1/2"}, "split"), ({"format": "yolo", "augment": -1}, "augment"),
    ({"format": "yolo", "colour": 1}, "unknown /export fields"), ([], "JSON object")])
def test_export_body_is_checked(tmp_path: Path, body: Any, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        options_from_body(7, body, tmp_path)


def test_spec_takes_classes_in_config_order() -> None:
    spec = export_spec(parse_label_config(SHAPES_CONFIG), ExportFormat.YOLO)
    assert spec.classes == SHAPE_CLASSES and spec.box_controls == ("shape",)
    assert export_spec(parse_label_config(SHAPES_CONFIG), ExportFormat.MASKS).mask_controls \
        == ("paint",)


def test_tasks_needed() -> None:
    assert tasks_needed(1, 100, 1.0, 1.0, 0.05) == 5  # (1 + 5) / (100 + 5) ≥ 5 %
    assert tasks_needed(10, 100, 1.0, 1.0, 0.05) == 0


# --- POST /export/<project> and `ml-backend export` ----------------------------------------------
def test_export_route_runs_a_job_with_progress(
        make_settings: Callable[..., Settings], image_root: Path, shapes: FakeProject) -> None:
    settings = make_settings(label_studio_url="http://127.0.0.1:1",
                             local_files_document_root=image_root)
    with backend_app(settings) as (client, runtime, jobs):
        runtime.ls_api = shapes  # type: ignore[assignment]
        response = client.post("/export/7", json={"format": "yolo", "out": "shapes",
                                                  "seed": 1})
        assert response.status_code == 200, response.get_json()
        out = Path(response.get_json()["out_dir"])
        assert out == settings.model_dir / "exports" / "shapes"
        assert jobs.wait_idle(120)
        [job] = [j for j in client.get("/jobs").get_json()["jobs"] if j["name"] == "export"]
        assert job["status"] == "finished", job
        assert job["progress"] == {"done": 25, "total": 25, "stage": "writing"}
        assert (out / "data.yaml").is_file()
        again = client.post("/export/7", json={"format": "yolo", "out": "shapes"})
        assert again.status_code == 409 and "not empty" in again.get_json()["error"]
        assert client.post("/export/8", json={"format": "yolo"}).status_code == 404
        nothing = client.post("/export/7", json={"format": "imagefolder"})
        assert nothing.status_code == 422 and "Choices" in nothing.get_json()["error"]
        assert client.post("/export/7", json={"format": "voc"}).status_code == 400


def test_cli_export(tmp_path: Path, image_root: Path, shapes: FakeProject,
                    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from ml_backend import cli
    from ml_backend.labelstudio import api

    monkeypatch.setattr(api, "LabelStudioAPI", lambda url, key: shapes)
    for name, value in {"LABEL_STUDIO_URL": "http://127.0.0.1:1", "LABEL_STUDIO_API_KEY": "k",
                        "MODEL_DIR": str(tmp_path / "models"),
                        "CACHE_DIR": str(tmp_path / "cache"),
                        "LOCAL_FILES_DOCUMENT_ROOT": str(image_root)}.items():
        monkeypatch.setenv(name, value)
    out = str(tmp_path / "cli-out")
    assert cli.main(["export", "--project", "7", "--format", "coco", "--out", out]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["written"]["train"] + summary["written"]["val"] + \
        summary["written"]["test"] == 25
    assert cli.main(["export", "--project", "9", "--format", "coco", "--out", out + "2"]) == 2
    assert "no project 9" in capsys.readouterr().err
    assert cli.main(["export", "--project", "7", "--format", "coco", "--out", out]) == 2
    assert "not empty" in capsys.readouterr().err
    assert cli.main(["export", "--project", "7", "--format", "imagefolder", "--out",
                     out + "3"]) == 2
    assert "nothing to export as imagefolder" in capsys.readouterr().err
