"""The in-core default plugins: in-memory storage, local executor, fake provider and the
native workflow loader and built-in actions. They are registered as the plugin ``builtin``
and can be disabled like any other (``FLOWYARD_DISABLE_PLUGINS=builtin``).
"""
