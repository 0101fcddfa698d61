"""The catalog of control API endpoints: name, request, reply, who may call, how many answer."""

from __future__ import annotations

from msgspec import Struct

from ctrlplane.api import messages as m
from ctrlplane.bus.subjects import API_VERSION

__all__ = ["API_VERSIONS", "ENDPOINTS", "SERVICE_NAME", "EndpointSpec", "endpoint"]

SERVICE_NAME = "ctrlplane"
"""The NATS micro service name every ``ctrlplane run`` process registers."""

API_VERSIONS: tuple[str, ...] = (API_VERSION,)
"""The API versions served: the subject's token after ``api``."""


class EndpointSpec(Struct, frozen=True, kw_only=True):
    """One endpoint of the API.

    Attributes:
        name: Its name, the last token of its subject.
        request: The Struct its request body must decode to (an empty body is ``{}``).
        reply: The Struct of its answer when it succeeds.
        description: What it does, for people and for ``$SRV.INFO``.
        mutating: Whether it changes the fleet (``admin`` and ``service`` only).
        scatter: Whether every process answers (each in a queue group of its
            own) rather than exactly one (one queue group shared by all).
    """

    name: str
    request: type
    reply: type
    description: str
    mutating: bool = False
    scatter: bool = False


ENDPOINTS: tuple[EndpointSpec, ...] = (
    EndpointSpec(
        name="apply",
        request=m.ApplyRequest,
        reply=m.ApplyReply,
        description="Make the recorded instances (and domains, when given) exactly the request's.",
        mutating=True,
    ),
    EndpointSpec(
        name="instances",
        request=m.InstancesRequest,
        reply=m.InstancesReply,
        description="Every recorded instance with its state and worst health.",
    ),
    EndpointSpec(
        name="health",
        request=m.HealthRequest,
        reply=m.HealthReply,
        description="Every health check of every instance.",
    ),
    EndpointSpec(
        name="telemetry",
        request=m.TelemetryRequest,
        reply=m.TelemetryReply,
        description="One instance's newest resource snapshot and metrics.",
    ),
    EndpointSpec(
        name="deployments",
        request=m.DeploymentsRequest,
        reply=m.DeploymentsReply,
        description="The newest deployments, of one instance or all.",
    ),
    EndpointSpec(
        name="certs",
        request=m.CertsRequest,
        reply=m.CertsReply,
        description="Every domain and its current certificate.",
    ),
    EndpointSpec(
        name="nodes",
        request=m.NodesRequest,
        reply=m.NodesReply,
        description="The cluster's nodes as the answering process sees them.",
    ),
    EndpointSpec(
        name="workers",
        request=m.WorkersRequest,
        reply=m.WorkersReply,
        description="Each process's workers: every process answers (gather until quiet).",
        scatter=True,
    ),
    EndpointSpec(
        name="runs",
        request=m.RunsRequest,
        reply=m.RunsReply,
        description="The run history of every worker, or one's, newest first.",
    ),
    EndpointSpec(
        name="dlq_list",
        request=m.DlqListRequest,
        reply=m.DlqListReply,
        description="The dead letters of every worker, or one's, newest first, without payloads.",
    ),
    EndpointSpec(
        name="dlq_show",
        request=m.DlqShowRequest,
        reply=m.DlqShowReply,
        description="One dead letter, its payload included.",
    ),
    EndpointSpec(
        name="dlq_purge",
        request=m.DlqPurgeRequest,
        reply=m.DlqPurgeReply,
        description="Remove the dead letters of every worker, or one's.",
        mutating=True,
    ),
    EndpointSpec(
        name="worker_pause",
        request=m.WorkerControlRequest,
        reply=m.WorkerControlReply,
        description="Pause a worker in the whole cluster, across restarts: "
        "its ticks are skipped, its events wait.",
        mutating=True,
    ),
    EndpointSpec(
        name="worker_resume",
        request=m.WorkerControlRequest,
        reply=m.WorkerControlReply,
        description="Resume a paused worker in the whole cluster.",
        mutating=True,
    ),
    EndpointSpec(
        name="worker_run",
        request=m.WorkerRunRequest,
        reply=m.WorkerRunReply,
        description="One extra run of a periodic worker now, after its current run if any.",
        mutating=True,
    ),
    EndpointSpec(
        name="dlq_replay",
        request=m.DlqReplayRequest,
        reply=m.DlqReplayReply,
        description="Send a dead letter (or all of a worker's) back to that worker alone.",
        mutating=True,
    ),
    EndpointSpec(
        name="describe",
        request=m.DescribeRequest,
        reply=m.DescribeReply,
        description="One instance in full: spec, state, process, restarts, checks, recent events.",
    ),
)
"""Every endpoint of :data:`~ctrlplane.bus.subjects.API_VERSION`."""

_BY_NAME = {e.name: e for e in ENDPOINTS}


def endpoint(name: str) -> EndpointSpec | None:
    """The endpoint called ``name``, or None."""
    return _BY_NAME.get(name)
