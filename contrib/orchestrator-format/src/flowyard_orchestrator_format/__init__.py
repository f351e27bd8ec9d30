"""flowyard-orchestrator-format: run the Orchestrator's YAML pipelines unchanged with flowyard.

The plugin registers a workflow loader (format ``orchestrator``) that recognizes Orchestrator
pipelines by their content and translates them to flowyard workflows, and the template filters
those pipelines use that flowyard lacks (``regex_search``, ``regex_replace`` and the
global ``now()``).
"""

from flowyard_orchestrator_format.loader import OrchestratorLoader, looks_like_orchestrator
from flowyard_orchestrator_format.translate import translate

__all__ = ["OrchestratorLoader", "looks_like_orchestrator", "translate"]
