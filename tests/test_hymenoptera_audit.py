"""The audit on real Lite0 features of the real ants/bees data."""

import pytest

from pipeline.audit import AuditConfig, run_audit

pytestmark = pytest.mark.slow


def test_audit_of_hymenoptera_puts_the_placeholder_gif_among_the_top_outliers(hymenoptera_lite0, tmp_path):
    result = run_audit(AuditConfig(hymenoptera_lite0, str(tmp_path / "audit")))
    readable = [r for r in result.rows if not r["unreadable"]]
    assert len(readable) == 245 + 153 and result.summary["unreadable"] == 0
    top = [r["path"] for r in sorted(readable, key=lambda r: -r["outlier_score"])[:3]]
    assert "train/ants/imageNotFound.gif" in top
    assert result.summary["splits"]["val"]["accuracy"] >= 0.93
    assert result.summary["leak_groups"] == 0  # hymenoptera's val does not repeat train images
    print({k: result.summary[k] for k in ("label_issues", "duplicate_groups", "outliers")}, top)
