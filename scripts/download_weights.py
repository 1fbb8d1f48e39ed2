#!/usr/bin/env python3
"""Download pretrained weights for users who are online (the backend itself never downloads).

    python scripts/download_weights.py --resnet resnet18

ResNet weights go to torchvision's cache ($TORCH_HOME/hub/checkpoints), where the backend
finds them without further settings. Other families are added as their adapters land.
"""

from __future__ import annotations

import argparse
import json
import sys


def download_resnet(arch: str) -> str:
    import torch
    import torchvision

    weights = torchvision.models.get_model_weights(arch).DEFAULT
    weights.get_state_dict(progress=True)  # stores the file in torch.hub's checkpoint dir
    return f"{torch.hub.get_dir()}/checkpoints/{weights.url.rsplit('/', 1)[-1]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resnet", default="resnet18", help="torchvision ResNet name")
    args = parser.parse_args()
    try:
        path = download_resnet(args.resnet)
    except Exception as exc:  # network errors of every kind: report and fail clearly
        print(f"download failed for {args.resnet}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"resnet": path}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
