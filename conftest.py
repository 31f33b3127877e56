"""pytest options shared by tests/ and suites/ (`pytest suites/ --backend triton`)."""
from harness import diagnosis
from harness.run import runner

runner.use_diagnosis(diagnosis)     # as the CLI does: run_case diagnoses failures (run sits below diagnosis)


def pytest_addoption(parser):
    group = parser.getgroup("gdn-harness")
    group.addoption("--backend", action="append", default=None,
                    help="backend(s) a suite runs against (registered name or package.module:attr)")
    group.addoption("--suite", default="smoke", help="suite run by suites/test_suite.py (default smoke)")
    group.addoption("--device", default="cpu", help="torch device for the cases (default cpu)")
    group.addoption("--oracle-device", default=None, help="where the fp64 oracle runs (default --device)")
    group.addoption("--report-dir", default=None, help="reserved: the CLI writes reports (gdn-harness run)")
