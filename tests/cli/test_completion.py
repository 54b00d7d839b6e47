"""Shell completion (bug 8): click's protocol, with worker names read from the registry."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.helpers.buildbot import BIN
from tests.helpers.cli import run_cli

WORKERS = ("alpha", "alpine", "beta")


@pytest.fixture
def enrolled(cli, reg_path):
    for name in WORKERS:
        assert cli("add", name).code == 0
    return reg_path


def complete(words: list[str], env: dict[str, str | None] | None = None) -> list[str]:
    """What ``bbenroll`` answers bash for the last of ``words`` (click's bash_complete protocol)."""
    result = run_cli(
        [],
        env={"_BBENROLL_COMPLETE": "bash_complete", "COMP_WORDS": " ".join(["bbenroll", *words]),
             "COMP_CWORD": str(len(words)), **(env or {})},
    )
    assert result.code == 0, result.err
    return [line for line in result.out.splitlines() if line]  # no candidates: an empty line


@pytest.mark.parametrize("command", ["show", "rotate", "set", "revoke", "restore", "remove"])
def test_worker_names_complete_from_the_registry(enrolled, command):
    registry = ["--registry", str(enrolled)]
    assert complete([*registry, command, ""]) == [f"plain,{name}" for name in WORKERS]
    assert complete([*registry, command, "alp"]) == ["plain,alpha", "plain,alpine"]
    assert complete([command, "b"], env={"BBENROLL_REGISTRY": str(enrolled)}) == ["plain,beta"]


def test_rotate_completes_every_name(enrolled):
    assert complete(["--registry", str(enrolled), "rotate", "alpha", "al"]) == ["plain,alpha", "plain,alpine"]


def test_no_names_from_a_missing_or_broken_registry(enrolled, tmp_path):
    assert complete(["--registry", str(tmp_path / "none.toml"), "show", ""]) == []
    enrolled.write_text("version = ")
    assert complete(["--registry", str(enrolled), "show", ""]) == []


def test_commands_and_options_complete(enrolled):
    assert complete(["re"]) == ["plain,revoke", "plain,restore", "plain,rebind", "plain,remove"]
    assert "plain,--qr" in complete(["show", "--"])


@pytest.mark.parametrize(
    "shell, marker",
    [("bash", "complete -o nosort -F _bbenroll_completion bbenroll"), ("zsh", "#compdef bbenroll"),
     ("fish", "complete --no-files --command bbenroll")],
)
def test_completion_prints_the_script(shell, marker):
    result = run_cli(["completion", shell])
    assert result.code == 0 and result.err == ""
    assert marker in result.out and "_BBENROLL_COMPLETE" in result.out


def test_unknown_shell_is_a_usage_error():
    result = run_cli(["completion", "tcsh"])
    assert result.code == 2 and "'tcsh' is not one of 'bash', 'zsh', 'fish'" in result.err


def test_real_bash_completes_worker_names(enrolled):
    """The installed script in a real bash, calling the real bbenroll back (bash passes the command as $1)."""
    script = (
        'eval "$(bbenroll completion bash)"; COMP_WORDS=(bbenroll show al); COMP_CWORD=2; '
        '_bbenroll_completion bbenroll; printf "%s\\n" "${COMPREPLY[@]}"'
    )
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "BBENROLL_REGISTRY": str(enrolled)}
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["alpha", "alpine"]
