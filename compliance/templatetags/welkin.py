"""Small presentation helpers: state badges, ages, sparklines."""

from datetime import timedelta

from django import template
from django.utils.html import format_html

from compliance.vocabulary import EXCEPTION_STATUS, SCAN_STATUS, STANDING, STATE, Vocabulary

register = template.Library()


@register.filter
def get(mapping, key):
    return (mapping or {}).get(key, 0)


def _badge(words: Vocabulary, value: str, kind: str):
    """A badge that carries its meaning in text (the label), not only colour."""
    if value not in words:
        return value
    term = words[value]
    return format_html(
        '<span class="{} {}" title="{}">{}</span>', kind, term.css, term.description, term.label
    )


@register.filter
def state_badge(state):
    return _badge(STATE, state, "state")


@register.filter
def status_badge(status):
    return _badge(SCAN_STATUS, status, "status")


@register.filter
def standing_badge(standing):
    return _badge(STANDING, standing, "standing")


@register.filter
def exception_badge(status):
    return _badge(EXCEPTION_STATUS, status, "exc")


@register.filter
def age(delta):
    if delta is None:
        return "never"
    if not isinstance(delta, timedelta):
        return ""
    s = int(delta.total_seconds())
    if s < 90:
        return f"{s} s"
    if s < 90 * 60:
        return f"{s // 60} min"
    if s < 36 * 3600:
        return f"{s // 3600} h"
    return f"{s // 86400} d"


@register.filter
def duration(delta):
    if delta is None:
        return "-"
    s = delta.total_seconds()
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


@register.simple_tag
def sparkline(values, label="trend"):
    """An inline SVG line of values (oldest first): readable without JavaScript."""
    values = list(values or [])
    if len(values) < 2:
        return format_html('<span class="muted">{}</span>', "not enough history")
    w, h = 120, 28
    top = max(values) or 1
    step = w / (len(values) - 1)
    points = " ".join(
        f"{i * step:.1f},{h - 2 - (v / top) * (h - 4):.1f}" for i, v in enumerate(values)
    )
    return format_html(
        '<svg class="spark" width="{}" height="{}" viewBox="0 0 {} {}" role="img" '
        'aria-label="{}: from {} to {}"><polyline fill="none" stroke="currentColor" '
        'stroke-width="1.5" points="{}"/></svg>',
        w,
        h,
        w,
        h,
        label,
        values[0],
        values[-1],
        points,
    )
