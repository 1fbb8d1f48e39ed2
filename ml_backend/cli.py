"""`ml-backend` command line: serve (gunicorn or the dev server), worker (RQ), train,
precompute (SAM embeddings), preannotate (a whole project), report (what pre-labels saved
annotators), export (labels as a training-ready data set), dedupe (near-duplicate tasks),
jobs (list them)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from ml_backend.core.logs import configure_logging
from ml_backend.core.settings import Settings


def _configure(settings: Settings) -> None:
    configure_logging(settings.log_level, settings.log_format)
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    if args.dev:
        from ml_backend.app import create_app

        create_app(settings).run(host=args.host, port=args.port, threaded=True)
        return 0
    from gunicorn.app.base import BaseApplication

    class _Gunicorn(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            self.cfg.set("bind", f"{args.host}:{args.port}")
            self.cfg.set("workers", args.workers)
            self.cfg.set("threads", args.threads)
            self.cfg.set("worker_class", "gthread")
            self.cfg.set("timeout", 300)  # /predict may take long; LS waits 100 s
            self.cfg.set("accesslog", "-" if args.access_log else None)
            if "control_socket_disable" in self.cfg.settings:
                # One fixed socket path per user would make several instances collide.
                self.cfg.set("control_socket_disable", True)

        def load(self) -> Any:
            # Each worker imports torch and builds its app after forking: the arbiter never
            # loads torch, so no torch (or OpenMP, CUDA) state crosses a fork.
            from ml_backend.app import create_app

            return create_app(settings)

    if args.workers > 1 and not settings.redis_url:
        logging.warning("%d gunicorn workers without REDIS_URL: each runs its own job thread;"
                        " set REDIS_URL to share one queue", args.workers)
    _Gunicorn().run()
    return 0


def _worker(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.redis_url:
        print("ml-backend worker needs REDIS_URL", file=sys.stderr)
        return 2
    from redis import Redis
    from rq import Queue, SimpleWorker

    from ml_backend.jobs.queues import bind_worker, lanes, rq_queue_name, storage_mismatch
    from ml_backend.jobs.registry import job_registry
    from ml_backend.runtime import Runtime

    runtime = Runtime(settings)
    registry = job_registry()
    bind_worker(runtime, registry)
    connection = Redis.from_url(settings.redis_url)
    mismatch = storage_mismatch(connection, settings.paths())
    if mismatch:
        logging.warning("%s", mismatch)
    # SimpleWorker runs jobs in this process: models stay loaded between jobs, and no
    # process forks after torch (or CUDA) has initialised.
    known = lanes(registry)
    chosen = [lane.strip() for lane in args.lanes.split(",")] if args.lanes else known
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        print(f"unknown lanes {unknown}; known: {known}", file=sys.stderr)
        return 2
    # Maintenance re-queues the jobs of workers that died (see PREANNOTATE_RETRIES). An idle
    # worker only runs it when its wait for a job times out (worker_ttl - 15 s), so the
    # two are tied.
    maintenance = settings.worker_maintenance_s
    worker = SimpleWorker([Queue(rq_queue_name(lane), connection=connection)
                           for lane in chosen], connection=connection,
                          maintenance_interval=maintenance, worker_ttl=maintenance + 15)
    worker.work(burst=args.burst, with_scheduler=False)
    return 0


def _train(args: argparse.Namespace, settings: Settings) -> int:
    from ml_backend.jobs.kinds import TrainRequest
    from ml_backend.models.classifier.training import train_classifier
    from ml_backend.runtime import Runtime

    request = TrainRequest(args.project, args.mode)
    outcome = train_classifier(Runtime(settings), request)
    print(json.dumps(outcome.as_dict(), indent=1))
    return 0


def _precompute(args: argparse.Namespace, settings: Settings) -> int:
    from ml_backend.core.errors import BackendError
    from ml_backend.models.sam.precompute import precompute_project
    from ml_backend.runtime import Runtime

    try:
        summary = precompute_project(Runtime(settings), args.project, args.limit)
    except BackendError as exc:
        print(f"precompute: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=1))
    return 0


def _preannotate(args: argparse.Namespace, settings: Settings) -> int:
    """Queue a whole-project pre-annotation (on RQ workers when REDIS_URL is set, else in
    this process) and, with --wait, follow it with a progress bar."""
    import time

    from ml_backend.core.progress import progress_bar
    from ml_backend.jobs.kinds import JobName, PreannotateRequest, job_key
    from ml_backend.jobs.registry import make_queue
    from ml_backend.pipeline.preannotation import preannotation_state
    from ml_backend.runtime import Runtime

    runtime = Runtime(settings)
    if runtime.ls_api is None:
        print("preannotate: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY", file=sys.stderr)
        return 2
    queue = make_queue(runtime)
    submitted = time.time()
    job = queue.submit(JobName.PREANNOTATE, PreannotateRequest(args.project),
                       key=job_key(JobName.PREANNOTATE, args.project))
    print(f"queued pre-annotation of project {args.project} (job {job})", file=sys.stderr)
    if not args.wait and settings.redis_url:
        return 0
    while True:
        state = preannotation_state(runtime, args.project)
        if state is not None and state["started_at"] >= submitted:
            progress_bar(sys.stderr, int(state["done"]), int(state["total"]),
                         time.time() - submitted)
            if state["status"] == "finished":
                break
        failed = [j for j in queue.recent() if j.get("status") == "failed"
                  and str(j.get("name")).startswith(JobName.PREANNOTATE.value)]
        if failed and (not settings.redis_url and queue.wait_idle(0.0)):
            # In this process nothing retries: report what failed (a rerun resumes).
            print(f"\npreannotate: {failed[0].get('error')}", file=sys.stderr)
            return 1
        time.sleep(0.5)
    print(file=sys.stderr)
    print(json.dumps(state, indent=1))
    queue.close()
    return 0


def _report(args: argparse.Namespace, settings: Settings) -> int:
    """A project's savings report as a table (or JSON), read from Label Studio; with --plot
    also a PNG. Builds no runtime: no model is loaded."""
    from ml_backend.core.errors import BackendError
    from ml_backend.labelstudio.api import LabelStudioAPI
    from ml_backend.reporting.savings import plot_report, project_report, report_table

    if not (settings.label_studio_url and settings.label_studio_api_key):
        print("report: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY", file=sys.stderr)
        return 2
    api = LabelStudioAPI(settings.label_studio_url, settings.label_studio_api_key)
    try:
        report = project_report(api, args.project)
    except BackendError as exc:
        print(f"report: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(report.as_dict(), indent=1) if args.json else report_table(report))
    if args.plot:
        plot_report(report, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _export(args: argparse.Namespace, settings: Settings) -> int:
    """A project's human labels as a training-ready data set in --out, in this process, with
    a progress bar; exit 2 for bad input (unknown project, a non-empty folder, a config with
    nothing for the format), 1 when Label Studio fails. Builds no runtime: no model loads."""
    import time

    from ml_backend.core.errors import BackendError, BadRequest, NotFound
    from ml_backend.core.images import ImageLoader
    from ml_backend.core.progress import progress_bar
    from ml_backend.core.store import ModelStore
    from ml_backend.export.dataset import OutputNotEmpty
    from ml_backend.export.run import ExportOptions, export_project
    from ml_backend.labelstudio.api import LabelStudioAPI

    if not (settings.label_studio_url and settings.label_studio_api_key):
        print("export: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY", file=sys.stderr)
        return 2
    started = time.monotonic()

    def show(done: int, total: int, stage: str) -> None:
        progress_bar(sys.stderr, done, total, time.monotonic() - started, unit="image")
        sys.stderr.write(f" {stage}  ")

    try:
        options = ExportOptions.parse(args.project, args.format, args.out, args.split,
                                      args.augment, args.seed, args.overwrite)
        api = LabelStudioAPI(settings.label_studio_url, settings.label_studio_api_key)
        outcome = export_project(api, ImageLoader(settings), ModelStore(settings.model_dir),
                                 options, progress=show)
    except (BadRequest, NotFound, OutputNotEmpty) as exc:
        print(f"\nexport: {exc}", file=sys.stderr)
        return 2
    except BackendError as exc:
        print(f"\nexport: {exc}", file=sys.stderr)
        return 1
    print(file=sys.stderr)
    for warning in outcome.as_dict()["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(json.dumps(outcome.as_dict(), indent=1))
    return 0


def _dedupe(args: argparse.Namespace, settings: Settings) -> int:
    """A project's near-duplicate groups (JSON); with --apply, mark all but one of each group
    in Label Studio so the ranking puts them at the end of the queue. Loads the classifier
    backbone in this process (embeddings come from the shared cache where they exist)."""
    from ml_backend.core.errors import BackendError, NotFound
    from ml_backend.quality.duplicates import apply_marks, find_duplicates
    from ml_backend.runtime import Runtime

    runtime = Runtime(settings)
    if runtime.ls_api is None:
        print("dedupe: set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY", file=sys.stderr)
        return 2
    try:
        dedupe, tasks = find_duplicates(runtime, args.project)
        summary = dedupe.as_dict()
        if args.apply:
            summary.update(apply_marks(runtime, dedupe, tasks))
    except NotFound as exc:
        print(f"dedupe: {exc}", file=sys.stderr)
        return 2
    except BackendError as exc:
        print(f"dedupe: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=1))
    if not args.apply and dedupe.marks:
        print(f"{len(dedupe.marks)} tasks would be marked; run again with --apply",
              file=sys.stderr)
    return 0


def _jobs(args: argparse.Namespace, settings: Settings) -> int:
    """Recent jobs: from Redis when REDIS_URL is set, else from a running server."""
    if settings.redis_url:
        from ml_backend.jobs.queues import RQQueue
        from ml_backend.jobs.registry import job_registry

        queue = RQQueue.from_url(settings.redis_url, job_registry())
        jobs = queue.recent()
        queue.close()
    else:
        import requests

        try:
            jobs = requests.get(f"{args.server.rstrip('/')}/jobs", timeout=10).json()["jobs"]
        except (requests.RequestException, ValueError, KeyError) as exc:
            print(f"jobs: no REDIS_URL and no server answering at {args.server}: {exc}",
                  file=sys.stderr)
            return 1
    for job in jobs[:args.limit]:
        print(json.dumps(job))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ml-backend", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP backend")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=9090)
    serve.add_argument("--workers", type=int, default=1, help="gunicorn worker processes")
    serve.add_argument("--threads", type=int, default=8, help="threads per worker")
    serve.add_argument("--dev", action="store_true", help="Flask's threaded dev server")
    serve.add_argument("--access-log", action="store_true")
    worker = sub.add_parser("worker", help="run an RQ worker (needs REDIS_URL)")
    worker.add_argument("--lanes", default=None,
                        help="comma-separated job lanes to take, in priority order "
                             "(default: all; 'models' = training and embedding, 'ranking' = "
                             "re-ranking, 'detector' = detector fine-tunes, 'sam' = SAM "
                             "embeddings, 'predict' = whole-project pre-annotation, "
                             "'export' = data set exports, 'quality' = label-quality "
                             "scores and the find-similar index)")
    worker.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    train = sub.add_parser("train", help="train a project's classifier now, in this process")
    train.add_argument("--project", type=int, required=True)
    train.add_argument("--mode", choices=("incremental", "full"), default="full")
    precompute = sub.add_parser(
        "precompute", help="encode SAM embeddings of a project's unlabeled tasks now, in "
                           "queue order, with a progress bar (needs LABEL_STUDIO_URL/_API_KEY)")
    precompute.add_argument("--project", type=int, required=True)
    precompute.add_argument("--limit", type=int, default=None, help="at most this many tasks")
    preannotate = sub.add_parser(
        "preannotate", help="predict every task of a project that has no prediction of the "
                            "current model version, in chunks on the job workers, writing "
                            "them to Label Studio (needs LABEL_STUDIO_URL/_API_KEY)")
    preannotate.add_argument("--project", type=int, required=True)
    preannotate.add_argument("--wait", action="store_true",
                             help="with REDIS_URL: follow the workers' progress (without "
                                  "Redis the jobs run in this process, so it always waits)")
    report = sub.add_parser(
        "report", help="what pre-labels saved annotators, per model version: accepted, "
                       "edited, deleted, added by hand, seconds saved under the cost model, "
                       "held-out quality, lead times (needs LABEL_STUDIO_URL/_API_KEY)")
    report.add_argument("--project", type=int, required=True)
    report.add_argument("--plot", default=None, metavar="PATH",
                        help="also write a PNG of the counts and seconds saved")
    report.add_argument("--json", action="store_true", help="the report as JSON, not a table")
    export = sub.add_parser(
        "export", help="write a project's human labels as a training-ready data set (YOLO, "
                       "COCO, ImageFolder or PNG masks) with train/val/test splits and a "
                       "balance report (needs LABEL_STUDIO_URL/_API_KEY)")
    export.add_argument("--project", type=int, required=True)
    export.add_argument("--format", required=True,
                        choices=("yolo", "coco", "imagefolder", "masks"))
    export.add_argument("--out", required=True, help="the folder to write (new or empty)")
    export.add_argument("--split", default="0.8/0.1/0.1",
                        help="train/val/test ratios (default 0.8/0.1/0.1); tasks exported "
                             "before keep their split")
    export.add_argument("--augment", type=int, default=0, metavar="N",
                        help="N augmented copies of each train image (val/test never)")
    export.add_argument("--seed", type=int, default=0)
    export.add_argument("--overwrite", action="store_true",
                        help="replace an earlier export in --out")
    dedupe = sub.add_parser(
        "dedupe", help="find near-duplicate tasks (backbone embeddings and dHash); with "
                       "--apply mark all but one of each group in Label Studio so they leave "
                       "the unlabeled queue (nothing is deleted; needs LABEL_STUDIO_URL/_API_KEY)")
    dedupe.add_argument("--project", type=int, required=True)
    dedupe.add_argument("--apply", action="store_true",
                        help="write the marks (default: only report the groups)")
    jobs = sub.add_parser("jobs", help="list recent background jobs with status and errors")
    jobs.add_argument("--server", default="http://127.0.0.1:9090",
                      help="without REDIS_URL: the backend whose in-process jobs to list")
    jobs.add_argument("--limit", type=int, default=50)
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    _configure(settings)
    # Absolute, resolved once (Settings): what a relative MODEL_DIR/CACHE_DIR meant here.
    logging.getLogger("ml_backend").info("storage: %s", settings.paths())
    handlers = {"serve": _serve, "worker": _worker, "train": _train, "precompute": _precompute,
                "preannotate": _preannotate, "report": _report, "export": _export,
                "dedupe": _dedupe, "jobs": _jobs}
    return handlers[args.command](args, settings)


if __name__ == "__main__":
    sys.exit(main())
