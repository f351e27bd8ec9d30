"""A plugin module that fails at import time."""

raise ImportError("flowyard-brokenplugin: this module fails to import on purpose")
