"""Charts of the dashboard, drawn as SVG on the server.

The costs page shows stacked bar charts (cost per day or per hour, one colour per model or
workflow). They are built here, in Python, as SVG text rather than in the browser by a
JavaScript chart library, because:

- **Escaping by construction.** Every string that reaches the SVG (a model or workflow name,
  which a tenant chooses) goes through :func:`markupsafe.escape` in one place,
  :func:`_esc`; a chart library would take those names as data and we would have to trust
  its handling of them (tooltips built as HTML are a classic injection path).
- **No CSP exceptions.** The dashboard's Content-Security-Policy forbids inline scripts and
  ``style=`` attributes. A static SVG needs neither: colours are a ``class``
  (``series-0`` .. ``series-9``, styled by ``ui.css``) *and* a ``fill="..."`` presentation
  attribute (allowed by the CSP), so a chart shows correctly even without the stylesheet.
  Tooltips are SVG ``<title>`` elements, shown by the browser itself.
- **No build step, no dependency.** Nothing to vendor, bundle or update for security fixes;
  the page works with JavaScript disabled.
- **Tiny.** A chart is a few kilobytes of markup; this module is a couple of hundred lines.

The output is a :class:`markupsafe.Markup`, so a Jinja2 template with autoescape inserts it
as is (it is already escaped).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from markupsafe import Markup, escape

__all__ = ["PALETTE", "MAX_SERIES", "OTHER", "format_usd", "nice_ticks", "stacked_bar_chart"]

#: The fixed palette (Okabe-Ito and Tableau tones, told apart by colour-blind readers too):
#: series ``i`` gets CSS class ``series-i`` and this fill colour.
PALETTE: tuple[str, ...] = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2",
                            "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")
#: The most series a chart draws; the smallest ones beyond it are summed as :data:`OTHER`.
MAX_SERIES = len(PALETTE)
#: Name of the series that sums the smallest series of a chart with too many.
OTHER = "(other)"

_WIDTH = 760
_PLOT_LEFT = 84
_PLOT_RIGHT = 16
_PLOT_TOP = 16
_PLOT_HEIGHT = 220
_AXIS_BAND = 40  # below the plot: x labels
_LEGEND_ROW = 20
_LEGEND_COLS = 2
_NAME_CHARS = 44  # legend names are cut to this many characters (the full name is the title)


def _esc(value: object) -> str:
    """The one escaping function of every string put in a chart (text and attributes)."""
    return str(escape(str(value)))


def format_usd(amount: float) -> str:
    """Format an amount of US dollars for people: ``$1,234``, ``$12.50``, ``$0.0042``.

    Small amounts (LLM calls often cost fractions of a cent) keep three significant digits
    instead of rounding to ``$0.00``.

    Args:
        amount: US dollars (>= 0; a negative amount gets a minus sign).

    Returns:
        The text, e.g. ``"$0.0123"``.
    """
    if amount < 0:
        return "-" + format_usd(-amount)
    if amount == 0:
        return "$0"
    if amount >= 100:
        return f"${amount:,.0f}"
    if amount >= 0.995:
        return f"${amount:,.2f}"
    if amount >= 0.01:
        return f"${amount:.2f}" if amount >= 0.1 else f"${amount:.3f}".rstrip("0")
    digits = max(3, 2 - math.floor(math.log10(amount)))  # three significant digits
    return f"${amount:.{digits}f}".rstrip("0").rstrip(".")


def nice_ticks(maximum: float, count: int = 4) -> list[float]:
    """Return round tick values from 0 to at least ``maximum`` (steps of 1, 2 or 5 times a
    power of ten).

    Args:
        maximum: the largest value to show (US dollars here; any unit works); <= 0 gives
            ``[0.0, 1.0]``-like ticks scaled to 1.
        count: about how many steps above zero.

    Returns:
        Increasing values starting at 0.0; the last one is >= ``maximum``.
    """
    if not maximum > 0 or math.isinf(maximum):
        maximum = 1.0
    raw = maximum / max(1, count)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw * (1 - 1e-9))
    steps = math.ceil(maximum / step - 1e-9)
    return [round(i * step, 12) for i in range(steps + 1)]


def _limit_series(series: Mapping[str, Sequence[float]], buckets: int
                  ) -> list[tuple[str, list[float]]]:
    """The series, largest total first; beyond :data:`MAX_SERIES`, the rest summed as one."""
    ordered = sorted(((name, [float(v) for v in values]) for name, values in series.items()),
                     key=lambda item: (-sum(item[1]), item[0]))
    if len(ordered) <= MAX_SERIES:
        return ordered
    kept, rest = ordered[:MAX_SERIES - 1], ordered[MAX_SERIES - 1:]
    other = [sum(values[i] for _, values in rest) for i in range(buckets)]
    return [*kept, (f"{OTHER} ({len(rest)} more)", other)]


def _num(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


def stacked_bar_chart(svg_id: str, title: str, labels: Sequence[str],
                      series: Mapping[str, Sequence[float]], *,
                      bucket_names: Sequence[str] | None = None) -> Markup:
    """Draw a stacked bar chart of US dollar amounts as an SVG element.

    One bar per bucket (a day or an hour), one stacked segment per series (a model or a
    workflow) with a ``<title>`` tooltip naming the series, the bucket and the amount; a y
    axis labelled in US dollars; a legend with each series' total. At most
    :data:`MAX_SERIES` series are drawn (the smallest beyond are summed as
    :data:`OTHER`). Every string is escaped.

    Args:
        svg_id: the ``id`` of the ``<svg>`` element (e.g. ``"cost-by-model"``).
        title: the chart's accessible title.
        labels: the x-axis label of each bucket (``"12-01"``, ``"14:00"``).
        series: amounts in US dollars per series name, one per bucket (same length as
            ``labels``).
        bucket_names: the full name of each bucket for tooltips (default: ``labels``).

    Returns:
        The ``<svg>`` markup, already escaped (:class:`markupsafe.Markup`).

    Raises:
        ValueError: a series does not have one value per label.
    """
    n = len(labels)
    for name, values in series.items():
        if len(values) != n:
            raise ValueError(f"series {name!r} has {len(values)} values for {n} buckets")
    names = list(bucket_names) if bucket_names is not None else list(labels)
    drawn = _limit_series(series, n)
    totals = [sum(values[i] for _, values in drawn) for i in range(n)]
    ticks = nice_ticks(max(totals, default=0.0))
    top = ticks[-1] or 1.0
    plot_w = _WIDTH - _PLOT_LEFT - _PLOT_RIGHT
    legend_rows = math.ceil(len(drawn) / _LEGEND_COLS)
    height = _PLOT_TOP + _PLOT_HEIGHT + _AXIS_BAND + legend_rows * _LEGEND_ROW + 8
    base_y = _PLOT_TOP + _PLOT_HEIGHT

    def y_of(value: float) -> float:
        return base_y - value / top * _PLOT_HEIGHT

    out: list[str] = [
        f'<svg id="{_esc(svg_id)}" class="chart" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {_WIDTH} {height}" width="100%" role="img" '
        f'aria-labelledby="{_esc(svg_id)}-title" font-family="sans-serif" font-size="11">',
        f'<title id="{_esc(svg_id)}-title">{_esc(title)}</title>',
    ]
    # y axis: grid lines and US dollar labels
    out.append('<g class="axis y-axis">')
    for tick in ticks:
        y = _num(y_of(tick))
        out.append(f'<line class="grid" x1="{_PLOT_LEFT}" x2="{_WIDTH - _PLOT_RIGHT}" '
                   f'y1="{y}" y2="{y}" stroke="#d0d0d0" stroke-width="1"/>')
        out.append(f'<text x="{_PLOT_LEFT - 6}" y="{y}" text-anchor="end" '
                   f'dominant-baseline="middle" fill="#444">{_esc(format_usd(tick))}</text>')
    out.append(f'<text class="axis-title" x="12" y="{_num(_PLOT_TOP + _PLOT_HEIGHT / 2)}" '
               f'text-anchor="middle" fill="#444" transform="rotate(-90 12 '
               f'{_num(_PLOT_TOP + _PLOT_HEIGHT / 2)})">US dollars</text>')
    out.append("</g>")
    # bars
    slot = plot_w / max(1, n)
    bar_w = max(1.0, slot * 0.8)
    out.append('<g class="bars">')
    for i in range(n):
        x = _PLOT_LEFT + i * slot + (slot - bar_w) / 2
        y = float(base_y)
        for index, (name, values) in enumerate(drawn):
            value = values[i]
            if value <= 0:
                continue
            h = value / top * _PLOT_HEIGHT
            y -= h
            colour = PALETTE[index % len(PALETTE)]
            out.append(
                f'<rect class="series-{index % len(PALETTE)}" x="{_num(x)}" y="{_num(y)}" '
                f'width="{_num(bar_w)}" height="{_num(max(h, 0.5))}" fill="{colour}">'
                f"<title>{_esc(name)} · {_esc(names[i])}: {_esc(format_usd(value))}</title>"
                "</rect>")
    out.append("</g>")
    # x axis: a baseline and labels (thinned out to about 12)
    out.append('<g class="axis x-axis">')
    out.append(f'<line x1="{_PLOT_LEFT}" x2="{_WIDTH - _PLOT_RIGHT}" y1="{base_y}" '
               f'y2="{base_y}" stroke="#444" stroke-width="1"/>')
    every = max(1, math.ceil(n / 12))
    for i in range(0, n, every):
        x = _num(_PLOT_LEFT + (i + 0.5) * slot)
        out.append(f'<text x="{x}" y="{base_y + 16}" text-anchor="middle" '
                   f'fill="#444">{_esc(labels[i])}</text>')
    out.append("</g>")
    # legend: swatch, name (cut; the full name is the tooltip) and total
    out.append('<g class="legend">')
    col_w = (_WIDTH - _PLOT_LEFT) / _LEGEND_COLS
    for index, (name, values) in enumerate(drawn):
        row, col = divmod(index, _LEGEND_COLS)
        x = _PLOT_LEFT + col * col_w
        y = base_y + _AXIS_BAND + row * _LEGEND_ROW
        shown = name if len(name) <= _NAME_CHARS else name[:_NAME_CHARS - 1] + "…"
        colour = PALETTE[index % len(PALETTE)]
        out.append(
            f'<g class="legend-item"><title>{_esc(name)}: '
            f"{_esc(format_usd(sum(values)))}</title>"
            f'<rect class="series-{index % len(PALETTE)}" x="{_num(x)}" y="{y - 10}" '
            f'width="12" height="12" fill="{colour}"/>'
            f'<text x="{_num(x + 18)}" y="{y}" fill="#222">{_esc(shown)} '
            f"({_esc(format_usd(sum(values)))})</text></g>")
    out.append("</g>")
    out.append("</svg>")
    return Markup("\n".join(out))
