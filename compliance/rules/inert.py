"""CSV cells that no spreadsheet evaluates (OWASP's advice against formula injection).
Pure, standard library only."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# A spreadsheet reads a cell that starts with one of these as a formula (OWASP, "CSV
# Injection"); names and images come from clusters, user names from the login form.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A CSV cell that no spreadsheet evaluates: text starting (after spaces) with a
    formula character gets a leading apostrophe, which spreadsheets show as text."""
    if isinstance(value, str) and value.lstrip(" ").startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_row(values: Iterable[Any]) -> list[Any]:
    return [csv_cell(v) for v in values]
