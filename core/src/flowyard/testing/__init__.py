"""The plugin test kit: pytest fixtures and contract suites per plugin family.

Installed as a pytest plugin (entry point ``pytest11``), so the fixtures are available in any
project that has flowyard installed:

- ``flowyard_home``: an isolated data and config directory (environment variables pointed
  at ``tmp_path``), so tests never touch the user's files.
- ``flowyard_stack``: a :class:`~flowyard.stack.Stack` of the in-core defaults, in-memory
  storage, and the fake provider as the default model (``fake/echo``); opened and closed
  around the test.
- ``fake_provider``: that stack's :class:`~flowyard.builtin.fake.FakeProvider` (script replies
  with ``fake_provider.add(...)``).
- ``tool_context``: a :class:`~flowyard.context.ToolContext` on ``flowyard_stack``.

Contract suites (subclass them in your plugin's tests and provide the fixture they name)::

    from flowyard.testing import ProviderContract

    class TestMyProvider(ProviderContract):
        model = "my-model"

        @pytest.fixture
        def provider(self):
            return MyProvider(...)

See :mod:`flowyard.testing.contracts` for each suite's fixtures and class attributes.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ExecutorContract",
    "ProviderContract",
    "RouterContract",
    "WorkflowLoaderContract",
    "ToolContract",
    "StorageContract",
    "MemoryContract",
    "RetrieverContract",
    "SharedLimitsContract",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        # lazy: contracts imports pytest, needed only by contract suites
        from flowyard.testing import contracts

        return getattr(contracts, name)
    raise AttributeError(f"module 'flowyard.testing' has no attribute {name!r}")
