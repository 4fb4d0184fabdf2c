"""The report page's entry points, without a database."""

from __future__ import annotations

import streams.report.page as page
from streams.report.data import ReportData


def test_public_names_are_importable() -> None:
    for name in page.__all__:
        assert hasattr(page, name), name


def test_an_empty_audit_database_still_renders_every_section() -> None:
    html = page.render_report(ReportData(source="empty"), generated_at_ms=0)
    assert html.startswith("<!DOCTYPE html>") and html.endswith("</main></body></html>")
    assert "Period no data" in html and "generated 1970-01-01 00:00 UTC" in html
    assert "No breach of the governance policy is open." in html
    assert "No breach was opened in this period." in html
    assert "Breach policy" not in html  # no policy: no policy table
    assert "Reproduce these numbers" in html
