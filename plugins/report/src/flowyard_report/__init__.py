"""flowyard-report: the ``report.write`` tool renders a Markdown or HTML report from a
sandboxed Jinja2 template and step outputs, and writes it inside a confined root.

See :mod:`flowyard_report.tool`, :mod:`flowyard_report.render` and ``docs/plugins/report.md``.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
