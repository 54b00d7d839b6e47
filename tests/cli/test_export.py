"""bbenroll export: FURL files in bulk (or one JSON document)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from bbenroll.tunnel.furlfile import read_furl_file


def furl_of(cli, name: str) -> str:
    return json.loads(cli("--json", "show", name).out)["furl"]


def test_export_all_writes_one_private_furl_file_per_usable_worker(cli, tmp_path: Path) -> None:
    for name in ("w1", "w2", "w3"):
        cli("add", name)
    cli("revoke", "w3")
    cli("rotate", "w2")  # serial 1: the file says so, as a pushed update would
    out = tmp_path / "handout"
    result = cli("export", "--all", "--dir", str(out))
    assert result.code == 0, result.err
    assert result.out == ""  # no FURL on a terminal, none in the scrollback
    assert "skipped worker 'w3': revoked" in result.err
    assert sorted(p.name for p in out.iterdir()) == ["w1.furl", "w2.furl"]
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for name in ("w1", "w2"):
        path = out / f"{name}.furl"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert read_furl_file(path).furl == furl_of(cli, name)
    assert read_furl_file(out / "w2.furl").serial == 1
    for furl in (furl_of(cli, "w1"), furl_of(cli, "w2")):
        assert furl not in result.err


def test_export_by_name_and_by_tag_and_the_json_document(cli, tmp_path: Path) -> None:
    cli("add", "a1", "--tag", "arm")
    cli("add", "a2", "--tag", "arm")
    cli("add", "x1")
    by_tag = json.loads(cli("--json", "export", "--tag", "arm").out)
    assert [w["name"] for w in by_tag["workers"]] == ["a1", "a2"]
    assert by_tag["workers"][0]["furl"] == furl_of(cli, "a1")
    assert by_tag["skipped"] == []
    by_name = cli("--json", "export", "x1", "--dir", str(tmp_path / "d"))
    assert by_name.code == 0
    document = json.loads(by_name.out)
    assert document["workers"] == [{"name": "x1", "serial": 0, "file": str(tmp_path / "d" / "x1.furl")}]
    assert "furl" not in by_name.out.replace("x1.furl", "")


def test_an_existing_different_file_is_kept_unless_forced(cli, tmp_path: Path) -> None:
    cli("add", "w1")
    out = tmp_path / "d"
    assert cli("export", "w1", "--dir", str(out)).code == 0
    assert cli("export", "w1", "--dir", str(out)).code == 0  # the same content: fine
    (out / "w1.furl").write_text("something else\n")
    refused = cli("export", "w1", "--dir", str(out))
    assert refused.code == 1 and "use --force" in refused.err
    assert (out / "w1.furl").read_text() == "something else\n"
    assert cli("export", "w1", "--dir", str(out), "--force").code == 0
    assert read_furl_file(out / "w1.furl").furl == furl_of(cli, "w1")


def test_bad_input_is_one_line(cli, tmp_path: Path) -> None:
    cli("add", "w1")
    (tmp_path / "file").write_text("x")
    cases = [
        (("export", "--dir", str(tmp_path / "d")), 2, "one of them"),
        (("export", "w1", "--all", "--dir", str(tmp_path / "d")), 2, "one of them"),
        (("export", "w1"), 2, "give --dir"),
        (("export", "nobody", "--dir", str(tmp_path / "d")), 1, "nobody"),
        (("export", "--tag", "none", "--dir", str(tmp_path / "d")), 1, "no worker has tag 'none'"),
        (("export", "w1", "--dir", str(tmp_path / "file")), 2, "is a file"),
    ]
    for args, code, message in cases:
        result = cli(*args)
        assert result.code == code, (args, result.err)
        assert message in result.err and "Traceback" not in result.err, (args, result.err)
    assert not (tmp_path / "d").exists()
    failed = cli("--json", "export", "nobody")
    assert failed.code == 1 and "error" in json.loads(failed.out)
