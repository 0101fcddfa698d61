"""The control plane's own HTTP endpoints: the status page, metrics, and the
health and readiness probes.

Modules are imported by name (``ctrlplane.web.addr``, ``ctrlplane.web.server``)
so that reading the config does not load aiohttp's server.
"""
