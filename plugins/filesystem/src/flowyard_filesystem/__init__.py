"""flowyard-filesystem: file tools confined to a root directory.

Actions: ``filesystem.read``, ``filesystem.write``, ``filesystem.append``, ``filesystem.list``,
``filesystem.glob``, ``filesystem.exists``, ``filesystem.mkdir``, ``filesystem.copy``,
``filesystem.move``, ``filesystem.delete``. See :mod:`flowyard_filesystem.tools` and
``docs/plugins/filesystem.md``; path confinement is :mod:`flowyard_safepath` (the library
distribution ``flowyard-safepath``).
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
