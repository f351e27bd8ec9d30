"""Deprecated import path of :mod:`flowyard.llm.modelregistry` (kept for plugins).

Import ``eligible``, ``ineligibility`` and ``ModelRegistry`` from :mod:`flowyard` instead.
"""

from __future__ import annotations

from flowyard.llm.modelregistry import *  # noqa: F403
from flowyard.llm.modelregistry import __all__  # noqa: F401
