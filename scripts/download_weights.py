#!/usr/bin/env python3
"""Download pretrained weights for users who are online (the backend itself never downloads).

    python scripts/download_weights.py --resnet resnet18
    python scripts/download_weights.py --yolo yolov8n.pt --dest var/models
    python scripts/download_weights.py --sam vit_b --dest var/models
    python scripts/download_weights.py --sam sam2.1_hiera_tiny --dest var/models
    python scripts/download_weights.py --clipseg CIDAS/clipseg-rd64-refined

ResNet weights go to torchvision's cache ($TORCH_HOME/hub/checkpoints), where the backend
finds them without further settings. YOLO weights (Ultralytics' release assets, e.g.
yolov8n.pt or yolo11n.pt) go to ``--dest``; point YOLO_CHECKPOINT at the printed path.
SAM checkpoints (Meta's releases of segment-anything and SAM 2.1) go to ``--dest`` too; set
SAM_CHECKPOINT to the printed path and SAM_MODEL_TYPE to the model type. CLIPSeg goes to
the Hugging Face cache ($HF_HOME); set CLIPSEG_MODEL to the model id (or the printed folder).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def download_resnet(arch: str) -> str:
    import torch
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    weights.get_state_dict(progress=True)  # stores the file in torch.hub's checkpoint dir
    return f"{torch.hub.get_dir()}/checkpoints/{weights.url.rsplit('/', 1)[-1]}"


def download_yolo(name: str, dest: Path) -> str:
    from ultralytics.utils.downloads import attempt_download_asset

    dest.mkdir(parents=True, exist_ok=True)
    return str(Path(attempt_download_asset(str(dest / name))).resolve())


# The released Segment Anything checkpoints (segment-anything's README).
SAM_URLS = {
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    # SAM 2.1 (sam2's README, checkpoints of 2024-09-28).
    **{f"sam2.1_hiera_{size}": "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"
       f"sam2.1_hiera_{size}.pt" for size in ("tiny", "small", "base_plus", "large")},
}


def download_sam(model_type: str, dest: Path) -> str:
    import torch

    if model_type not in SAM_URLS:
        raise ValueError(f"unknown SAM model type {model_type!r}; one of {sorted(SAM_URLS)}")
    url = SAM_URLS[model_type]
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / url.rsplit("/", 1)[-1]
    if not path.is_file():
        torch.hub.download_url_to_file(url, str(path), progress=True)
    return str(path.resolve())


def download_clipseg(repo_id: str) -> str:
    from huggingface_hub import snapshot_download

    # Model, processor and tokenizer files only (the repositories also hold other formats).
    return snapshot_download(repo_id, allow_patterns=["*.json", "*.txt", "*.safetensors",
                                                      "pytorch_model.bin"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resnet", default="resnet18", help="torchvision ResNet name "
                        "('' to skip)")
    parser.add_argument("--yolo", default="", help="Ultralytics weights to fetch, e.g. "
                        "yolov8n.pt or yolo11n.pt")
    parser.add_argument("--sam", default="", help="Segment Anything model type to fetch: "
                        "vit_b (375 MB), vit_l, vit_h, or SAM 2.1: sam2.1_hiera_tiny (156 MB), "
                        "sam2.1_hiera_small, sam2.1_hiera_base_plus, sam2.1_hiera_large")
    parser.add_argument("--clipseg", default="", help="Hugging Face id of a CLIPSeg model, "
                        "e.g. CIDAS/clipseg-rd64-refined (600 MB)")
    parser.add_argument("--dest", type=Path, default=Path("var/models"),
                        help="folder for YOLO and SAM weights")
    args = parser.parse_args()
    paths = {}
    jobs = [("resnet", args.resnet, lambda: download_resnet(args.resnet)),
            ("yolo", args.yolo, lambda: download_yolo(args.yolo, args.dest)),
            ("sam", args.sam, lambda: download_sam(args.sam, args.dest)),
            ("clipseg", args.clipseg, lambda: download_clipseg(args.clipseg))]
    for family, name, fetch in jobs:
        if not name:
            continue
        try:
            paths[family] = fetch()
        except Exception as exc:  # network errors of every kind: report and fail clearly
            print(f"download failed for {name}: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
