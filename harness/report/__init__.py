"""Stage: results.json, summary, HTML, JUnit, run diffs, live reports, drift."""
