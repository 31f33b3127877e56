"""pytest options shared by tests/ and suites/."""


def pytest_addoption(parser):
    group = parser.getgroup("gdn-harness")
    group.addoption("--device", default="cpu", help="torch device for device-aware tests (default cpu)")
    group.addoption("--report-dir", default=None, help="where suite runs write their reports")
