"""Output: JSON decided once, one document at most, progress only for a person at a terminal."""

from __future__ import annotations

import io
import json

import pytest

from bbenroll.cli.output import Output, Result


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def use_streams(monkeypatch) -> tuple[io.StringIO, FakeTerminal]:
    """Fresh stdout and a terminal stderr: set in the test itself (pytest resets both after setup)."""
    out, err = io.StringIO(), FakeTerminal()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr("sys.stderr", err)
    return out, err


def test_progress_only_on_a_terminal(monkeypatch):
    out, err = use_streams(monkeypatch)
    output = Output(color=False)
    output.progress("connecting")
    assert err.getvalue() == "connecting\n"
    piped = io.StringIO()
    monkeypatch.setattr("sys.stderr", piped)
    output.progress("connecting")
    assert piped.getvalue() == "" and out.getvalue() == ""


@pytest.mark.parametrize("json_mode", [False, True])
def test_emit_writes_the_document_or_the_text(monkeypatch, json_mode):
    out, err = use_streams(monkeypatch)
    output = Output(color=False, json_mode=json_mode)

    def show(o: Output) -> None:
        o.data("the data")
        o.table(("name",), [("w1",)])
        o.info("a message")

    output.emit(Result({"name": "w1"}, show))
    if json_mode:
        assert json.loads(out.getvalue()) == {"name": "w1"} and out.getvalue().count("\n") == 1
        assert err.getvalue() == ""
    else:
        assert out.getvalue() == "the data\nname\n----\nw1\n"
        assert err.getvalue() == "a message\n"


def test_human_data_is_never_written_with_json(monkeypatch):
    out, _ = use_streams(monkeypatch)
    output = Output(color=False, json_mode=True)
    output.data("pb://secret")
    output.table(("a",), [("b",)])
    assert out.getvalue() == ""


def test_one_document_at_most(monkeypatch):
    out, err = use_streams(monkeypatch)
    output = Output(color=False, json_mode=True)
    output.json([1])
    with pytest.raises(RuntimeError):
        output.json([2])
    # an error after the document: the message on stderr, no error document
    assert output.fail("it broke", 1) == 1
    assert out.getvalue() == "[1]\n"
    assert err.getvalue() == "error: it broke\n"


def test_an_error_is_the_document_when_there_is_none(monkeypatch):
    out, err = use_streams(monkeypatch)
    output = Output(color=False, json_mode=True)
    assert output.fail("bad option", 2) == 2
    assert json.loads(out.getvalue()) == {"error": "bad option", "exit": 2}
    assert err.getvalue() == "error: bad option\n"
