#!/usr/bin/env python3
"""Create a Label Studio project from a label config and a folder of images, optionally
connect the ML backend, fetch its predictions and add the "Most informative first",
"Suspected label errors" and "Near-duplicates" views.

Reads LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY from the environment; prints JSON of what
it created. Example::

    LABEL_STUDIO_URL=http://127.0.0.1:8080 LABEL_STUDIO_API_KEY=... \\
    .venv/bin/python scripts/setup_project.py --config labeling_configs/digit_classification.xml \\
        --images var/digits --backend-url http://127.0.0.1:9090 --title "Digits"
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp"}


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="label config XML file")
    parser.add_argument("--images", type=Path, help="folder of images to upload (recursive)")
    parser.add_argument("--title", default="Active learning project", help="project title")
    parser.add_argument("--backend-url", help="ML backend URL to connect, e.g. http://127.0.0.1:9090")
    parser.add_argument("--basic-auth", metavar="USER:PASS", help="backend basic auth")
    parser.add_argument("--webhook-secret", default=os.environ.get("WEBHOOK_SECRET"),
                        help="register a project webhook carrying this secret (the backend's "
                             "WEBHOOK_SECRET; default: that variable)")
    parser.add_argument("--no-interactive", action="store_true",
                        help="register the backend without interactive pre-annotation")
    parser.add_argument("--no-predictions", action="store_true",
                        help="do not run 'Retrieve predictions' after connecting")
    parser.add_argument("--no-view", action="store_true",
                        help="skip the Data Manager views (informative-first, suspected label "
                             "errors, near-duplicates)")
    parser.add_argument("--export", type=Path, help="also write a JSON export to this file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the setup steps; return a process exit code."""
    args = _parse(argv)
    url = os.environ.get("LABEL_STUDIO_URL", "").rstrip("/")
    api_key = os.environ.get("LABEL_STUDIO_API_KEY", "")
    if not url or not api_key:
        print("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY", file=sys.stderr)
        return 2

    from label_studio_sdk import LabelStudio

    from ml_backend.devtools import project_setup as ps

    client = LabelStudio(base_url=url, api_key=api_key)
    out: dict[str, Any] = {"label_studio_url": url}
    out["project_id"] = project_id = ps.create_project(client, args.title, args.config)
    if args.images:
        paths = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        out["task_ids"] = ps.upload_images(url, api_key, project_id, paths)
    if args.backend_url:
        auth = tuple(args.basic_auth.split(":", 1)) if args.basic_auth else None
        out["ml_backend_id"] = ps.connect_backend(
            client, project_id, args.backend_url, title=args.title,
            is_interactive=not args.no_interactive, basic_auth=auth,  # type: ignore[arg-type]
        )
        if args.webhook_secret:
            out["webhook_id"] = ps.register_webhook(client, project_id, args.backend_url,
                                                    args.webhook_secret)
        out["model_version"] = client.projects.get(id=project_id).model_version
        if not args.no_predictions:
            ps.retrieve_predictions(client, project_id)
            out["predictions_retrieved"] = True
    if not args.no_view:
        out["view_id"] = ps.create_informative_view(client, project_id)
        # Created now (empty) so annotators find them from the start; the backend's quality
        # job and `ml-backend dedupe --apply` fill their columns and reuse them by title.
        out["label_errors_view_id"] = ps.ensure_label_errors_view(client, project_id)
        out["duplicates_view_id"] = ps.ensure_duplicates_view(client, project_id)
    if args.export:
        out["export"] = str(ps.export_annotations(client, project_id, "JSON", args.export))
    out["project_url"] = f"{url}/projects/{project_id}/data"
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
