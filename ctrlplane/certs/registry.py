"""Finding the router: the built-in file router, or the one an installed package declares."""

from __future__ import annotations

import inspect

from ctrlplane.certs.acme import AcmeIssuer
from ctrlplane.certs.http01 import Http01Responder
from ctrlplane.certs.issuer import CertError, Issuer
from ctrlplane.certs.local_ca import LocalCA
from ctrlplane.certs.router import ACME_DIR, CA_DIR, CERTS_DIR, FileRouter
from ctrlplane.config import Config
from ctrlplane.plugins import entry_point_objects
from ctrlplane.types import Router

ENTRY_POINT_GROUP = "ctrlplane.routers"

HTTP01_HOST = "0.0.0.0"
HTTP01_PORT = 80
_METHODS = (
    "add_route",
    "update_route",
    "remove_route",
    "add_domain",
    "remove_domain",
    "provision_cert",
)


class RouterLoadError(CertError):
    """A router that an entry point declares cannot be loaded.

    Attributes:
        ref: The entry point, with its ``module:attr`` value.
        reason: Why it could not be loaded.
    """

    def __init__(self, ref: str, reason: str) -> None:
        self.ref = ref
        self.reason = reason
        super().__init__(f"router {ref}: {reason}")

    def __reduce__(self) -> tuple[type[RouterLoadError], tuple[str, str]]:
        return type(self), (self.ref, self.reason)


def builtin_issuers(config: Config) -> dict[str, Issuer]:
    """``local`` always; ``acme`` when ``config.acme_directory`` is set.

    The ACME account key is ``<data_dir>/certs/acme/account.key``; http-01
    challenges are answered on port 80 and written to
    ``<data_dir>/certs/acme/webroot`` for a reverse proxy that holds port 80.
    """
    certs = config.data_dir / CERTS_DIR
    issuers: dict[str, Issuer] = {"local": LocalCA(certs / CA_DIR)}
    if config.acme_directory is not None:
        issuers["acme"] = AcmeIssuer(
            config.acme_directory,
            account_key=certs / ACME_DIR / "account.key",
            responder=Http01Responder(
                HTTP01_HOST, HTTP01_PORT, webroot=certs / ACME_DIR / "webroot"
            ),
            email=config.acme_email,
            ca_bundle=config.acme_ca_bundle,
            eab_kid=config.acme_eab_kid,
            eab_hmac_key=config.acme_eab_hmac_key_file,
        )
    return issuers


def load_router(config: Config, group: str = ENTRY_POINT_GROUP) -> Router:
    """The router of this control plane.

    The built-in :class:`FileRouter`, unless an installed package declares one
    in the ``ctrlplane.routers`` entry-point group: a class or factory, called
    with the :class:`~ctrlplane.config.Config`, or a router instance.

    Raises:
        RouterLoadError: an entry point cannot be loaded or is not a router,
            or more than one package declares a router.
    """
    found: list[tuple[str, Router]] = []
    for ref, obj in entry_point_objects(
        group,
        is_plugin=lambda o: isinstance(o, Router),
        args=(config,),
        error=RouterLoadError,
        called_with="the config",
    ):
        found.append((ref, _router(ref, obj)))
    if len(found) > 1:
        refs = ", ".join(ref for ref, _ in found)
        raise RouterLoadError(refs, "only one router may be installed; uninstall the others")
    if found:
        return found[0][1]
    return FileRouter(config.data_dir, builtin_issuers(config))


def _router(ref: str, obj: object) -> Router:
    if not isinstance(obj, Router):
        raise RouterLoadError(ref, f"is not a router: it needs 'name' and {', '.join(_METHODS)}")
    for method in _METHODS:
        if not inspect.iscoroutinefunction(getattr(obj, method)):
            raise RouterLoadError(ref, f"{method!r} must be an async method")
    return obj
