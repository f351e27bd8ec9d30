"""flowyard-gleitzeit-format: load Gleitzeit workflow files (``tasks`` with ``method`` and
``params``, batch workflows over a directory) as flowyard workflows, and Gleitzeit's Python
convenience API (:mod:`flowyard_gleitzeit_format.client`) on a flowyard stack.
"""

from flowyard_gleitzeit_format.translate import (
    GleitzeitLoader,
    Settings,
    TaskInfo,
    Translation,
    sniff,
    translate,
)

__all__ = ["GleitzeitLoader", "Settings", "TaskInfo", "Translation", "sniff", "translate"]
