"""The metrics catalog: declared once, exposed whole, documented in docs/metrics.md."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from mailgate.observe import metrics
from mailgate.observe.counters import Counters
from mailgate.observe.reference import render_metrics
from mailgate.web.metrics import render

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "mailgate"


def test_metrics_reference_is_in_sync() -> None:
    checked_in = (ROOT / "docs" / "metrics.md").read_text()
    assert checked_in == render_metrics(), "run `mailgate docs --write`"


def test_every_catalog_metric_is_exposed_even_before_any_traffic() -> None:
    status = {"queues": {"postoffice": {}}, "processes": [], "counters": Counters().snapshot()}
    families = {f.name: f for f in text_string_to_metric_families(render(status).decode())}
    for metric in metrics.METRICS.values():
        assert metric.family in families, f"{metric.name} is not exposed"
        assert families[metric.family].type == metric.kind.value, metric.name
        assert families[metric.family].documentation == metric.help, metric.name


def test_metric_names_are_spelt_only_in_the_catalog() -> None:
    """Emitters and readers use the catalog's constants: a metric name written as a string
    anywhere else could drift from what /metrics and docs/metrics.md say."""
    name = re.compile(r"[\"']mailgate_[a-z_]+[\"']")
    known = {f'"{m}"' for m in metrics.METRICS} | {f"'{m}'" for m in metrics.METRICS}
    found = [
        f"{path.relative_to(SRC)}: {text}"
        for path in SRC.rglob("*.py")
        if path.name != "metrics.py" or path.parent.name != "observe"
        for text in name.findall(path.read_text())
        if text in known
    ]
    assert not found, found
