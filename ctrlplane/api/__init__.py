"""The control API: a NATS micro service on ``<prefix>.api.v1.<endpoint>``.

Modules: :mod:`~ctrlplane.api.endpoints` (the catalog), :mod:`~ctrlplane.api.messages`
(requests and replies), :mod:`~ctrlplane.api.errors`, :mod:`~ctrlplane.api.wire`
(durations as seconds, strict request decoding), :mod:`~ctrlplane.api.service`
(the micro service), :mod:`~ctrlplane.api.domain` (the domain's handlers),
:mod:`~ctrlplane.api.client` (the asking side) and :mod:`~ctrlplane.api.schema`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ctrlplane.lazy import lazy_exports

if TYPE_CHECKING:
    from ctrlplane.api.client import RemoteError, list_workers, request
    from ctrlplane.api.domain import DomainApi
    from ctrlplane.api.endpoints import API_VERSIONS, ENDPOINTS, SERVICE_NAME, EndpointSpec
    from ctrlplane.api.errors import (
        ApiError,
        BadRequestError,
        ErrorBody,
        ErrorDetail,
        ForbiddenError,
        InternalError,
        NotFoundError,
        RefusedError,
        UnavailableError,
    )
    from ctrlplane.api.messages import (
        ApplyReply,
        ApplyRequest,
        CertsReply,
        CertsRequest,
        CertView,
        CheckView,
        DeadLetterView,
        DeploymentsReply,
        DeploymentsRequest,
        DlqListReply,
        DlqListRequest,
        DlqPurgeReply,
        DlqPurgeRequest,
        DlqReplayReply,
        DlqReplayRequest,
        DlqReplaySkipped,
        DlqShowReply,
        DlqShowRequest,
        HealthReply,
        HealthRequest,
        InstancesReply,
        InstancesRequest,
        InstanceView,
        NodesReply,
        NodesRequest,
        RunsReply,
        RunsRequest,
        RunView,
        TelemetryReply,
        TelemetryRequest,
        WorkersReply,
        WorkersRequest,
    )
    from ctrlplane.api.schema import api_schema
    from ctrlplane.api.service import ApiService

__all__ = [
    "API_VERSIONS",
    "ENDPOINTS",
    "SERVICE_NAME",
    "ApiError",
    "ApiService",
    "ApplyReply",
    "ApplyRequest",
    "BadRequestError",
    "CertView",
    "CertsReply",
    "CertsRequest",
    "CheckView",
    "DeadLetterView",
    "DeploymentsReply",
    "DeploymentsRequest",
    "DlqListReply",
    "DlqListRequest",
    "DlqPurgeReply",
    "DlqPurgeRequest",
    "DlqReplayReply",
    "DlqReplayRequest",
    "DlqReplaySkipped",
    "DlqShowReply",
    "DlqShowRequest",
    "DomainApi",
    "EndpointSpec",
    "ErrorBody",
    "ErrorDetail",
    "ForbiddenError",
    "HealthReply",
    "HealthRequest",
    "InstanceView",
    "InstancesReply",
    "InstancesRequest",
    "InternalError",
    "NodesReply",
    "NodesRequest",
    "NotFoundError",
    "RefusedError",
    "RemoteError",
    "RunView",
    "RunsReply",
    "RunsRequest",
    "TelemetryReply",
    "TelemetryRequest",
    "UnavailableError",
    "WorkersReply",
    "WorkersRequest",
    "api_schema",
    "list_workers",
    "request",
]

# Each name is imported on first use (PEP 562): `ctrlplane workers` asks through
# the client and must not load the store and the domain the handlers need.
_EXPORTS = {
    "RemoteError": "ctrlplane.api.client",
    "list_workers": "ctrlplane.api.client",
    "request": "ctrlplane.api.client",
    "DomainApi": "ctrlplane.api.domain",
    "API_VERSIONS": "ctrlplane.api.endpoints",
    "ENDPOINTS": "ctrlplane.api.endpoints",
    "SERVICE_NAME": "ctrlplane.api.endpoints",
    "EndpointSpec": "ctrlplane.api.endpoints",
    "ApiError": "ctrlplane.api.errors",
    "BadRequestError": "ctrlplane.api.errors",
    "ErrorBody": "ctrlplane.api.errors",
    "ErrorDetail": "ctrlplane.api.errors",
    "ForbiddenError": "ctrlplane.api.errors",
    "InternalError": "ctrlplane.api.errors",
    "NotFoundError": "ctrlplane.api.errors",
    "RefusedError": "ctrlplane.api.errors",
    "UnavailableError": "ctrlplane.api.errors",
    "ApplyReply": "ctrlplane.api.messages",
    "ApplyRequest": "ctrlplane.api.messages",
    "CertsReply": "ctrlplane.api.messages",
    "CertsRequest": "ctrlplane.api.messages",
    "CertView": "ctrlplane.api.messages",
    "CheckView": "ctrlplane.api.messages",
    "DeploymentsReply": "ctrlplane.api.messages",
    "DeploymentsRequest": "ctrlplane.api.messages",
    "HealthReply": "ctrlplane.api.messages",
    "HealthRequest": "ctrlplane.api.messages",
    "InstancesReply": "ctrlplane.api.messages",
    "InstancesRequest": "ctrlplane.api.messages",
    "InstanceView": "ctrlplane.api.messages",
    "NodesReply": "ctrlplane.api.messages",
    "NodesRequest": "ctrlplane.api.messages",
    "TelemetryReply": "ctrlplane.api.messages",
    "TelemetryRequest": "ctrlplane.api.messages",
    "DeadLetterView": "ctrlplane.api.messages",
    "DlqListReply": "ctrlplane.api.messages",
    "DlqListRequest": "ctrlplane.api.messages",
    "DlqPurgeReply": "ctrlplane.api.messages",
    "DlqReplayReply": "ctrlplane.api.messages",
    "DlqReplayRequest": "ctrlplane.api.messages",
    "DlqReplaySkipped": "ctrlplane.api.messages",
    "DlqPurgeRequest": "ctrlplane.api.messages",
    "DlqShowReply": "ctrlplane.api.messages",
    "DlqShowRequest": "ctrlplane.api.messages",
    "RunView": "ctrlplane.api.messages",
    "RunsReply": "ctrlplane.api.messages",
    "RunsRequest": "ctrlplane.api.messages",
    "WorkersReply": "ctrlplane.api.messages",
    "WorkersRequest": "ctrlplane.api.messages",
    "api_schema": "ctrlplane.api.schema",
    "ApiService": "ctrlplane.api.service",
}

if not TYPE_CHECKING:
    # Hidden from mypy, which reads the imports above and so still rejects a
    # misspelt name instead of typing it as Any.
    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, __all__)
