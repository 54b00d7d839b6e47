"""``bbenroll import``: a stock master's workers into the registry (docs/migration.md).

Two halves:

* :func:`load_master_workers` has Buildbot's own configuration loader
  (``FileLoader(basedir, config).loadConfig()``, as ``buildbot checkconfig`` and a
  starting master do: master.cfg executed with ``basedir`` in its globals and on
  ``sys.path``, in the basedir) load master.cfg **in a child process**, which
  describes each ``c['workers']`` entry as JSON (:class:`FoundWorker`). A child,
  because master.cfg is arbitrary code: a ``sys.exit()``, a changed ``os.environ``,
  a module it imports, printing or a hang must not reach the CLI that imports it.
* :func:`plan_import` (pure: no Buildbot, no files, the clock passed in) turns those
  descriptions and the registry into a :class:`Plan`: what is imported, with which
  options, and what is not carried and why. :func:`apply_plan` adds the plan's
  workers in the caller's one registry edit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

from bbenroll.errors import BBEnrollError
from bbenroll.registry import model

DEFAULT_CONFIG = "master.cfg"
LOAD_TIMEOUT = 300.0  # seconds for master.cfg to load (it may import plugins, read secrets)

# the options [workers.NAME.buildbot] holds (registry/schema.py's BUILDBOT_OPTIONS), in the order shown
CARRIED_OPTIONS = (
    "max_builds",
    "properties",
    "defaultProperties",
    "keepalive_interval",
    "missing_timeout",
    "notify_on_missing",
    "machine_name",
)

IMPORT, SKIP, EXISTS = "import", "skip", "exists"
PLAIN_WORKER = "buildbot.worker.base.Worker"

def next_step(pb_port: str | None) -> str:
    """What to do after an import: the old PB port stays public (``legacy_pb``) for the workers
    not migrated yet, and master.cfg declares the workers from the registry."""
    port = pb_port if pb_port is not None else "9989"
    endpoint = port if ":" in port else f"tcp:{port}"
    return (
        f"next: set legacy_pb = \"{endpoint}\" in workers.toml's [master] (the PB port the workers use "
        "now, kept public until they are migrated), and in master.cfg replace c['workers'] and "
        "c['protocols'] by these two lines:\n"
        "    from bbenroll.master import Enrollment\n"
        "    Enrollment(\"workers.toml\", basedir=basedir).configure(c)\n"
        "then migrate each worker: bbenroll worker migrate BASEDIR FURL (docs/migration.md)"
    )


class ImportError_(BBEnrollError):  # ImportError is the builtin's name
    pass


# --- what master.cfg declares ------------------------------------------------------


@dataclass(frozen=True)
class FoundWorker:
    """One ``c['workers']`` entry as the child saw it (all JSON types).

    ``password``: the plain string, or None when it is not one (``password_type`` says
    what it is). ``options``: every checkConfig argument the entry sets to a value other
    than Buildbot's default, as ``{"value": V}`` (a TOML-able value) or
    ``{"problem": WHY}``. ``enrollment``: declared by bbenroll's own Enrollment.
    """

    name: str
    cls: str = PLAIN_WORKER
    latent: bool = False
    password: str | None = None
    password_type: str = "str"
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    enrollment: bool = False

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FoundWorker:
        return cls(
            name=str(data["name"]),
            cls=str(data.get("cls", PLAIN_WORKER)),
            latent=bool(data.get("latent", False)),
            password=data.get("password"),
            password_type=str(data.get("password_type", "str")),
            options=dict(data.get("options", {})),
            enrollment=bool(data.get("enrollment", False)),
        )


@dataclass(frozen=True)
class LoadedMaster:
    workers: list[FoundWorker]
    pb_port: str | None  # c['protocols']['pb']['port'] as a string: the port the workers use now


def load_master_workers(
    basedir: Path, config: str = DEFAULT_CONFIG, *, python: str | None = None, timeout: float = LOAD_TIMEOUT
) -> list[FoundWorker]:
    """The workers of ``basedir/config`` (:func:`load_master`)."""
    return load_master(basedir, config, python=python, timeout=timeout).workers


def load_master(
    basedir: Path,
    config: str = DEFAULT_CONFIG,
    *,
    python: str | None = None,
    timeout: float = LOAD_TIMEOUT,
) -> LoadedMaster:
    """What ``basedir/config`` declares, loaded by Buildbot's loader in a child process.

    ImportError_ (one line, Buildbot's reason) when master.cfg does not load.
    """
    basedir = Path(basedir)
    if not basedir.is_dir():
        raise ImportError_(f"{basedir}: not a directory (give the master's basedir)")
    command = [python or sys.executable, "-m", "bbenroll.master.importing", str(basedir.absolute()), config]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # no __pycache__ beside master.cfg's modules
    try:
        proc = subprocess.run(
            command, capture_output=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL, check=False
        )
    except subprocess.TimeoutExpired:
        raise ImportError_(f"{basedir / config}: did not load within {timeout:.0f}s") from None
    except OSError as e:
        raise ImportError_(f"cannot run {command[0]}: {e.strerror}") from None
    answer = _answer(proc.stdout)
    if answer is None:
        said = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        last = said[-1] if said else f"exit status {proc.returncode}"
        raise ImportError_(f"{basedir / config}: loading it failed: {last}")
    if "error" in answer:
        raise ImportError_(f"{basedir / config}: Buildbot cannot load it: {answer['error']}")
    pb = answer.get("pb_port")
    workers = [FoundWorker.from_json(w) for w in answer["workers"]]
    return LoadedMaster(workers, None if pb is None else str(pb))


ANSWER_MARK = b"bbenroll-import-answer: "


def _answer(stdout: bytes) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(ANSWER_MARK):
            try:
                value = json.loads(line[len(ANSWER_MARK):])
            except ValueError:
                return None
            return value if isinstance(value, dict) else None
    return None


# --- the plan (pure) ----------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    name: str
    action: str  # IMPORT, SKIP or EXISTS
    options: Mapping[str, Any] = field(default_factory=dict)  # what [workers.NAME.buildbot] gets
    problems: tuple[str, ...] = ()  # what is not carried, each with its reason
    worker: model.Worker | None = None  # the registry entry (IMPORT only)

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "action": self.action,
            "options": dict(self.options),
            "problems": list(self.problems),
        }


@dataclass(frozen=True)
class Plan:
    entries: tuple[Entry, ...]

    @property
    def importable(self) -> list[Entry]:
        return [e for e in self.entries if e.action == IMPORT]

    def as_json(self) -> dict[str, Any]:
        return {
            "workers": [e.as_json() for e in self.entries],
            "imported": [e.name for e in self.importable],
        }


def plan_import(found: Iterable[FoundWorker], registry: model.Registry, now: datetime) -> Plan:
    """What importing ``found`` into ``registry`` does at ``now``: every worker gets an
    entry, importable or not; nothing is raised for a worker that cannot be carried."""
    entries = []
    for worker in found:
        entries.append(_plan_one(worker, registry, now))
    return Plan(tuple(entries))


def _plan_one(found: FoundWorker, registry: model.Registry, now: datetime) -> Entry:
    name = found.name
    if found.enrollment:
        return Entry(name, SKIP, problems=("declared by bbenroll's Enrollment already: in the registry",))
    if found.latent:
        return Entry(name, SKIP, problems=(
            f"latent worker ({found.cls}): its instances cannot keep a password; declare it with "
            "Enrollment.latent (docs/fleets.md)",
        ))
    if found.password is None:
        return Entry(name, SKIP, problems=(
            f"its password is not a plain string ({found.password_type}): bbenroll must know the "
            "password to keep it (make it a string, or 'bbenroll add' the worker with a new one)",
        ))
    if not found.password:
        return Entry(name, SKIP, problems=("its password is empty: the registry needs one",))
    if name in registry.workers:
        return Entry(name, EXISTS, problems=("exists: a worker of that name is in the registry already",))
    try:
        model.check_buildbot_name(name)
    except BBEnrollError as e:
        return Entry(name, SKIP, problems=(f"its name cannot be a registry worker's: {e}",))
    problems = []
    if found.cls != PLAIN_WORKER:
        problems.append(f"class {found.cls}: imported as a plain buildbot Worker; its own behaviour is lost")
    options: dict[str, Any] = {}
    for key, option in found.options.items():
        if key not in CARRIED_OPTIONS:
            why = option.get("problem") or "the registry cannot hold it"
            problems.append(f"option {key}: not carried ({why})")
        elif "problem" in option:
            problems.append(f"option {key}: not carried ({option['problem']})")
        else:
            why = toml_problem(option.get("value"))
            if why:
                problems.append(f"option {key}: not carried ({why})")
            else:
                options[key] = option["value"]
    options = {key: options[key] for key in CARRIED_OPTIONS if key in options}
    worker = replace(
        model.new_worker(name, now), password=found.password, legacy=True, buildbot=options
    )
    return Entry(name, IMPORT, options=options, problems=tuple(problems), worker=worker)


def toml_problem(value: Any, where: str = "") -> str | None:
    """Why TOML cannot hold ``value`` (None: it can)."""
    at = f" at {where}" if where else ""
    if value is None:
        return f"None{at}: TOML has no null"
    if isinstance(value, (bool, int, str, datetime, date, time)):
        if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**63:
            return f"{value}{at}: beyond TOML's 64-bit integers"
        return None
    if isinstance(value, float):
        return None  # TOML has inf and nan too
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            why = toml_problem(item, f"{where}[{i}]")
            if why:
                return why
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"key {key!r}{at}: TOML keys are strings"
            why = toml_problem(item, f"{where}.{key}" if where else key)
            if why:
                return why
        return None
    return f"a {type(value).__name__}{at}"


def apply_plan(editor: Any, plan: Plan) -> list[str]:
    """Add the plan's importable workers in ``editor`` (a store.Editor: one edit, one save).

    Re-checks the names against the registry as the editor read it under its lock: a worker
    added since the plan was made is refused with "exists" (BBEnrollError), nothing written.
    """
    from bbenroll.errors import WorkerExists

    taken = [e.name for e in plan.importable if e.name in editor.registry.workers]
    if taken:
        raise WorkerExists(f"exists: {', '.join(taken)} added to the registry meanwhile; nothing imported")
    for entry in plan.importable:
        assert entry.worker is not None
        editor.add(entry.worker)
    return [e.name for e in plan.importable]


# --- the one registry edit ------------------------------------------------------------


def import_workers(
    registry_path: Path, plan: Plan, *, now: datetime, actor: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> list[str]:
    """Write ``plan``'s importable workers, with their ``[workers.NAME.buildbot]`` options, into
    the registry at ``registry_path`` in ONE edit (under the registry's lock, audited, atomic),
    and return their names."""
    from bbenroll.registry import store

    with store.edit(Path(registry_path), timeout, actor=actor, now=now) as editor:
        names = apply_plan(editor, plan)
    return names


def _describe_value(value: Any) -> dict[str, Any]:
    """An option value as JSON can carry it, or why it cannot be carried."""
    from buildbot.interfaces import IRenderable
    from buildbot.process.properties import Properties

    if isinstance(value, Properties):
        value = {k: v for k, (v, _source) in value.properties.items()}
    if IRenderable.providedBy(value):
        return {"problem": f"an {type(value).__name__}, which Buildbot renders at run time"}
    why = toml_problem(value)
    if why:
        return {"problem": why}
    try:
        return {"value": json.loads(json.dumps(value, default=_no_json))}
    except (TypeError, ValueError) as e:
        return {"problem": str(e)}


def _no_json(value: Any) -> Any:
    if isinstance(value, (datetime, date, time)):
        raise TypeError(f"a {type(value).__name__} (not carried through JSON)")
    raise TypeError(f"a {type(value).__name__}")


def _nested_renderable(value: Any) -> str | None:
    from buildbot.interfaces import IRenderable

    if IRenderable.providedBy(value):
        return type(value).__name__
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        for item in value:
            found = _nested_renderable(item)
            if found:
                return found
    return None


def describe_worker(worker: Any, enrollment_ids: set[int]) -> dict[str, Any]:
    """One loaded Buildbot worker as :class:`FoundWorker`'s JSON."""
    import inspect

    from buildbot.interfaces import IRenderable
    from buildbot.worker.latent import AbstractLatentWorker

    cls = type(worker)
    password = getattr(worker, "password", None)
    described: dict[str, Any] = {
        "name": str(worker.name),
        "cls": f"{cls.__module__}.{cls.__qualname__}",
        "latent": isinstance(worker, AbstractLatentWorker),
        "enrollment": id(worker) in enrollment_ids,
        "password": password if isinstance(password, str) and not IRenderable.providedBy(password) else None,
        "password_type": type(password).__name__,
    }
    options: dict[str, Any] = {}
    try:
        signature = inspect.signature(worker.checkConfig)
        bound = signature.bind(*worker._config_args, **worker._config_kwargs)
    except (TypeError, ValueError, AttributeError) as e:
        options["arguments"] = {"problem": f"cannot read its arguments: {e}"}
        described["options"] = options
        return described
    for key, value in bound.arguments.items():
        if key in ("name", "password"):
            continue
        parameter = signature.parameters[key]
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            for extra in value:
                options[extra] = {"problem": f"{cls.__name__}'s own option"}
            continue
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                options[key] = {"problem": "positional arguments the registry cannot name"}
            continue
        if parameter.default is not inspect.Parameter.empty and _same(value, parameter.default):
            continue  # Buildbot's default: nothing to carry
        if value in (None, {}, []) and key in _NONE_MEANS_EMPTY:
            continue  # the same as the default (None) for Buildbot
        if key == "locks":
            options[key] = {"problem": "locks are master.cfg objects; keep them in a builder or step"}
            continue
        renderable = _nested_renderable(value)
        options[key] = (
            {"problem": f"holds an {renderable}, which Buildbot renders at run time"}
            if renderable else _describe_value(value)
        )
    described["options"] = options
    return described


_NONE_MEANS_EMPTY = ("properties", "defaultProperties", "notify_on_missing", "locks")


def _same(value: Any, default: Any) -> bool:
    try:
        return type(value) is type(default) and bool(value == default)
    except Exception:
        return False


def _child(basedir: str, config: str) -> int:
    """Load master.cfg as Buildbot does and print the workers (run by load_master_workers)."""
    answer_stream = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever master.cfg prints goes to stderr: stdout carries the answer only
    sys.stdout = sys.stderr
    enrollment_ids: set[int] = set()
    try:
        try:
            from buildbot.config.errors import ConfigErrors
            from buildbot.config.master import FileLoader
        except ImportError:
            answer_stream.write(ANSWER_MARK + json.dumps({"error": (
                f"buildbot is not installed for {sys.executable}: run bbenroll import where the master runs"
            )}).encode("utf-8") + b"\n")
            answer_stream.flush()
            return 0
        _watch_enrollment(enrollment_ids)
        os.chdir(basedir)
        try:
            loaded = FileLoader(basedir, config).loadConfig()
        except ConfigErrors as e:
            answer: dict[str, Any] = {"error": "; ".join(" ".join(str(m).split()) for m in e.errors)}
        else:
            pb = (loaded.protocols or {}).get("pb") or {}
            port = pb.get("port") if isinstance(pb, dict) else None
            answer = {
                "workers": [describe_worker(w, enrollment_ids) for w in loaded.workers],
                "pb_port": port if isinstance(port, (str, int)) else None,
            }
    except BaseException as e:  # master.cfg is arbitrary code: SystemExit too
        answer = {"error": f"{type(e).__name__}: {e}"}
    answer_stream.write(ANSWER_MARK + json.dumps(answer).encode("utf-8") + b"\n")
    answer_stream.flush()
    return 0


def _watch_enrollment(ids: set[int]) -> None:
    """Note which Buildbot workers bbenroll's own Enrollment makes (they are in the registry)."""
    try:
        from bbenroll.master import hook
    except ImportError:
        return
    original_workers = hook.Enrollment.workers
    original_latent = hook.Enrollment.latent

    def workers(self: Any, **defaults: Any) -> list[Any]:
        made = original_workers(self, **defaults)
        ids.update(id(w) for w in made)
        return made

    def latent(self: Any, *args: Any, **kwargs: Any) -> Any:
        made = original_latent(self, *args, **kwargs)
        ids.add(id(made))
        return made

    hook.Enrollment.workers = workers  # type: ignore[method-assign]
    hook.Enrollment.latent = latent  # type: ignore[method-assign]


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1], sys.argv[2]))
