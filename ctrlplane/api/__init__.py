"""The control API: a NATS micro service on ``<prefix>.api.v1.<endpoint>``.

Modules: :mod:`~ctrlplane.api.endpoints` (the catalog), :mod:`~ctrlplane.api.messages`
(requests and replies), :mod:`~ctrlplane.api.errors`, :mod:`~ctrlplane.api.wire`
(durations as seconds, strict request decoding), :mod:`~ctrlplane.api.service`
(the micro service), :mod:`~ctrlplane.api.domain` (the domain's handlers),
:mod:`~ctrlplane.api.client` (the asking side) and :mod:`~ctrlplane.api.schema`.
"""

from __future__ import annotations

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
    DeploymentsReply,
    DeploymentsRequest,
    HealthReply,
    HealthRequest,
    InstancesReply,
    InstancesRequest,
    InstanceView,
    NodesReply,
    NodesRequest,
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
    "DeploymentsReply",
    "DeploymentsRequest",
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
    "TelemetryReply",
    "TelemetryRequest",
    "UnavailableError",
    "WorkersReply",
    "WorkersRequest",
    "api_schema",
    "list_workers",
    "request",
]
