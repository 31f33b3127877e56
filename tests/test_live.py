"""The console while a run goes on: a live line with the case in progress and an ETA."""
import io

from harness.report.live import Progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_live_line_names_the_running_case_and_an_eta(monkeypatch):
    err = _Tty()
    monkeypatch.setattr("sys.stderr", err)
    p = Progress(3, quiet=False)
    p.start("op.fused_gdn_gating[my-port-strided]")
    assert "op.fused_gdn_gating[my-port-strided]" in err.getvalue()       # before it ends
    p.done(dict(id="op.fused_gdn_gating[my-port-strided]", status="fail", duration_s=0.1))
    p.close()
    out = err.getvalue()
    assert "1/3" in out and "<" in out and "1 failing" in out             # tqdm's elapsed<remaining


def test_log_lines_carry_an_eta(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    p = Progress(2, quiet=False)
    p.start("a")
    p.done(dict(id="a", status="pass", duration_s=0.5))
    assert "[   1/2] PASS  a  0.50s  eta " in err.getvalue()
