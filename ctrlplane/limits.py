"""Bounds on what one control request may ask for.

Apart from :mod:`ctrlplane.api` so that the CLI can check its options against
them without loading the API's server side.
"""

from __future__ import annotations

from datetime import timedelta

MAX_LIMIT = 10_000
"""The most records one request may ask for."""
MAX_SINCE = timedelta(days=36_500)
"""The longest look-back a request may ask for."""
