"""log_reason: why a demo process failed, in one line, from its log."""

from __future__ import annotations

from pathlib import Path

from bbenroll.demo.logs import LOG_REASON_WINDOW, log_reason


def test_log_reason_finds_buildbots_configuration_errors(tmp_path: Path) -> None:
    log = tmp_path / "twistd.log"
    log.write_text(
        "2026-11-29 07:53:59+0000 [-] Loading configuration from 'master.cfg'\n"
        "2026-11-29 07:54:00+0000 [-] Configuration Errors:\n"
        "2026-11-29 07:54:00+0000 [-]   no workers are configured\n"
        "2026-11-29 07:54:00+0000 [-]   no builders are configured\n"
        "2026-11-29 07:54:00+0000 [-] Halting master.\n"
        "2026-11-29 07:54:00+0000 [-] BuildMaster startup failed\n"
        "2026-11-29 07:54:00+0000 [-] Server Shut Down.\n"
    )
    assert log_reason(log) == "configuration errors: no workers are configured; no builders are configured"
    assert log_reason(tmp_path / "missing.log") == ""


def test_log_reason_prefers_the_exception_that_ended_a_traceback(tmp_path: Path) -> None:
    log = tmp_path / "twistd.log"
    log.write_text(
        "2026-11-29 08:02:59+0000 [-] while starting BuildMaster\n"
        "\tTraceback (most recent call last):\n"
        '\t  File "tcp.py", line 1438, in startListening\n'
        "\ttwisted.internet.error.CannotListenError: Couldn't listen on 127.0.0.1:1: in use.\n"
        "\t\n"
        "2026-11-29 08:02:59+0000 [-] BuildMaster startup failed\n"
        "2026-11-29 08:02:59+0000 [-] Server Shut Down.\n"
    )
    assert log_reason(log) == "CannotListenError: Couldn't listen on 127.0.0.1:1: in use."


def test_log_reason_falls_back_to_an_error_line_then_the_last_line(tmp_path: Path) -> None:
    log = tmp_path / "worker-create.log"
    log.write_text("connecting...\nerror: the master refused this FURL\nbye\n")
    assert log_reason(log) == "error: the master refused this FURL"
    log.write_text("starting\n\n  done, somehow  \n\n")
    assert log_reason(log) == "done, somehow"
    log.write_text("\n \n")
    assert log_reason(log) == ""


def test_log_reason_looks_only_at_the_end_of_a_long_log(tmp_path: Path) -> None:
    log = tmp_path / "twistd.log"
    old = "ValueError: an old problem, long since logged past\n"
    log.write_text(old + "".join(f"line {i}\n" for i in range(LOG_REASON_WINDOW)))
    assert log_reason(log) == f"line {LOG_REASON_WINDOW - 1}"
    log.write_text(old + "".join(f"line {i}\n" for i in range(LOG_REASON_WINDOW - 1)))
    assert log_reason(log) == "ValueError: an old problem, long since logged past"
