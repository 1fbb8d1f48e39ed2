"""docker-compose.yml runs a worker for every lane of the job registry.

With Redis (as compose runs), a job whose lane no worker takes waits in its RQ queue for
ever: label-quality scoring and exports never ran before the compose file had a worker for
the ``quality`` and ``export`` lanes. The lanes come from the registry itself, so a new job
kind on a new lane fails here until compose serves it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ml_backend.jobs.queues import lanes
from ml_backend.jobs.registry import job_registry

COMPOSE_FILE = Path(__file__).resolve().parents[1] / "docker-compose.yml"
ALL_LANES = None  # a worker started without --lanes takes every lane (see ml_backend.cli)


def compose_services() -> dict[str, Mapping[str, Any]]:
    # safe_load resolves the file's `<<: *backend` merge keys
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]


def worker_lanes(command: Any) -> list[str] | None:
    """The lanes of an ``ml-backend worker`` command (ALL_LANES without ``--lanes``), or []
    for any other command."""
    if not isinstance(command, list) or command[:2] != ["ml-backend", "worker"]:
        return []
    if "--lanes" not in command:
        return ALL_LANES
    value = command[command.index("--lanes") + 1]
    return [lane.strip() for lane in value.split(",")]


def served_lanes(services: Mapping[str, Mapping[str, Any]], known: list[str],
                 *, with_profiles: bool) -> dict[str, list[str]]:
    """Lane → the services whose workers take it; services behind a profile (opt-in, such
    as the GPU worker) only when ``with_profiles``."""
    served: dict[str, list[str]] = {}
    for name, service in services.items():
        if service.get("profiles") and not with_profiles:
            continue
        chosen = worker_lanes(service.get("command"))
        for lane in known if chosen is ALL_LANES else chosen:
            served.setdefault(lane, []).append(name)
    return served


def test_every_registry_lane_has_a_default_worker() -> None:
    known = lanes(job_registry())
    served = served_lanes(compose_services(), known, with_profiles=False)
    unserved = [lane for lane in known if lane not in served]
    assert not unserved, (f"no worker in {COMPOSE_FILE.name} (outside a profile) takes the "
                          f"lanes {unserved}; served: {served}")


def test_compose_names_only_known_lanes() -> None:
    # `ml-backend worker` exits at start on an unknown lane: a typo would be a dead service
    known = lanes(job_registry())
    served = served_lanes(compose_services(), known, with_profiles=True)
    assert set(served) <= set(known), f"unknown lanes {sorted(set(served) - set(known))}"


def test_worker_lanes_reads_the_command() -> None:
    assert worker_lanes(["ml-backend", "worker", "--lanes", "quality, export"]) == [
        "quality", "export"]
    assert worker_lanes(["ml-backend", "worker"]) is ALL_LANES
    assert worker_lanes(["ml-backend", "serve", "--port", "9090"]) == []
    assert worker_lanes(None) == []
