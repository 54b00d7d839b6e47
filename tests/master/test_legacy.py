"""master/legacy.py (pure) and the hook's cut-over configuration (configure with legacy_pb)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from buildbot.config.errors import ConfigErrors

from bbenroll.errors import BBEnrollError
from bbenroll.master import legacy
from bbenroll.master.hook import Enrollment, pb_login_refusal
from bbenroll.registry import store
from bbenroll.registry.model import Worker

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
LEG = ("127.0.0.1", 40001)  # a tunnel leg's local address


def worker(name: str = "w1", **fields) -> Worker:
    return Worker(name, "a" * 32, "pw", NOW - timedelta(days=1), NOW - timedelta(days=1), **fields)


class TestWhoLogsInDirectly:
    def test_a_legacy_worker_that_has_not_moved_logs_in_directly(self):
        w = worker(legacy=True)
        assert legacy.login_refusal(w, ("203.0.113.5", 5555), [LEG], legacy_pb="tcp:9989") is None

    def test_a_moved_worker_is_refused_directly_even_from_loopback(self):
        w = worker(legacy=True, moved=NOW)
        why = legacy.login_refusal(w, ("127.0.0.1", 40002), [LEG], legacy_pb="tcp:9989")
        assert why == legacy.MOVED_ONLY_THROUGH_TUNNEL

    def test_a_moved_worker_is_refused_directly_after_the_cut_over_too(self):
        w = worker(legacy=True, moved=NOW)
        assert legacy.login_refusal(w, ("127.0.0.1", 40002), [], legacy_pb=None) is not None

    def test_a_moved_worker_passes_through_its_tunnel(self):
        w = worker(legacy=True, moved=NOW)
        assert legacy.login_refusal(w, LEG, [LEG], legacy_pb="tcp:9989") is None

    def test_an_unknown_peer_is_not_a_tunnel(self):
        assert legacy.login_refusal(worker(moved=NOW), None, [LEG], legacy_pb=None) is not None

    def test_a_bbenroll_worker_is_refused_on_a_public_port(self):
        assert legacy.login_refusal(worker(), ("127.0.0.1", 1), [LEG], legacy_pb="tcp:9989") == (
            legacy.ONLY_THROUGH_TUNNEL
        )
        assert legacy.login_refusal(worker(), ("127.0.0.1", 1), [LEG], legacy_pb=None) is None

    def test_a_worker_declared_by_hand_is_buildbots_to_judge(self):
        assert legacy.login_refusal(None, ("203.0.113.5", 1), [], legacy_pb="tcp:9989") is None


class TestMoved:
    def test_a_legacy_worker_is_marked_once(self):
        moved = legacy.mark_moved(worker(legacy=True), NOW)
        assert moved is not None and moved.moved == NOW and moved.legacy
        assert legacy.mark_moved(moved, NOW + timedelta(hours=1)) is None

    def test_a_worker_that_was_never_legacy_is_not_marked(self):
        assert legacy.mark_moved(worker(), NOW) is None

    def test_left_to_move_skips_moved_revoked_and_native_workers(self):
        workers = {
            "b": worker("b", legacy=True),
            "a": worker("a", legacy=True),
            "moved": worker("moved", legacy=True, moved=NOW),
            "revoked": worker("revoked", legacy=True, revoked=NOW),
            "native": worker("native"),
        }
        assert legacy.left_to_move(workers, NOW) == ["a", "b"]

    def test_migration_state(self):
        assert legacy.migration_state(worker(legacy=True)) == "legacy"
        assert legacy.migration_state(worker(legacy=True, moved=NOW)) == "moved"
        assert legacy.migration_state(worker()) == ""


class TestEndpoints:
    @pytest.mark.parametrize(
        ("server", "client"),
        [
            ("tcp:9989", "tcp:9989:interface=127.0.0.1"),
            ("9989", "tcp:9989:interface=127.0.0.1"),
            ("tcp:port=9989:interface=0.0.0.0", "tcp:9989:interface=127.0.0.1"),
            ("tcp6:9989:interface=\\:\\:", "tcp6:9989:interface=::1"),
            ("tcp:9989:interface=10.0.0.5", "tcp:9989:interface=10.0.0.5"),
        ],
    )
    def test_the_tunnel_dials_the_legacy_port_on_loopback(self, server, client):
        assert legacy.tunnel_endpoint(server) == client

    @pytest.mark.parametrize("bad", ["unix:/tmp/pb", "tcp:0", "tcp:notaport", "ssl:9989"])
    def test_a_legacy_pb_without_a_tcp_port_is_refused(self, bad):
        with pytest.raises(BBEnrollError, match="legacy_pb"):
            legacy.check_legacy_pb(bad)

    def test_the_pb_port_is_the_legacy_one_during_a_cut_over(self):
        assert legacy.pb_port("tcp:9990:interface=127.0.0.1", "tcp:9989") == "tcp:9989"
        assert legacy.pb_port("tcp:9990:interface=127.0.0.1", None) == "tcp:9990:interface=127.0.0.1"

    def test_leg_addresses_are_the_local_ends_of_live_legs(self):
        def leg(host, port, disconnected=False):
            transport = SimpleNamespace(
                disconnected=disconnected, getHost=lambda: SimpleNamespace(host=host, port=port)
            )
            return SimpleNamespace(transport=transport)

        sessions = [
            SimpleNamespace(legs={1: leg("127.0.0.1", 40001), 2: leg("127.0.0.1", 40003, True)}),
            SimpleNamespace(legs={}),
        ]
        assert legacy.leg_addresses(sessions) == {("127.0.0.1", 40001)}


# -- the hook: configure() with legacy_pb, duplicates ------------------------------------


def set_master(path, **fields):
    with store.edit(path) as editor:
        editor.set_master(replace(editor.master, **fields))


def add(path, name, **fields):
    from bbenroll.furl import new_swissnum

    with store.edit(path) as editor:
        editor.add(replace(worker(name, **fields), swissnum=new_swissnum()))


class TestConfigure:
    def test_without_legacy_pb_the_pb_port_is_the_loopback_one(self, reg_path):
        c: dict = {}
        Enrollment(reg_path).configure(c)
        assert c["protocols"] == {"pb": {"port": "tcp:9990:interface=127.0.0.1:backlog=1024"}}

    def test_legacy_pb_puts_buildbots_pb_port_on_the_public_one(self, reg_path):
        set_master(reg_path, legacy_pb="tcp:9989")
        c: dict = {}
        Enrollment(reg_path).configure(c)
        # exactly as written: it is the stock workers' port, already listening under that string
        assert c["protocols"] == {"pb": {"port": "tcp:9989"}}

    def test_a_public_pb_is_still_refused_with_legacy_pb(self, reg_path):
        set_master(reg_path, legacy_pb="tcp:9989")
        text = reg_path.read_text().replace('pb = "tcp:9990:interface=127.0.0.1"', 'pb = "tcp:9990"')
        reg_path.write_text(text)
        with pytest.raises(ConfigErrors, match="every interface"):
            Enrollment(reg_path).configure({})

    def test_a_bad_legacy_pb_is_a_config_error(self, reg_path):
        set_master(reg_path, legacy_pb="unix:/tmp/pb")
        with pytest.raises(ConfigErrors, match="legacy_pb"):
            Enrollment(reg_path).configure({})

    def test_a_worker_declared_by_hand_and_in_the_registry_is_an_error_naming_it(self, reg_path):
        from buildbot.worker import Worker as BuildbotWorker

        add(reg_path, "both", legacy=True)
        add(reg_path, "ours")
        c = {"workers": [BuildbotWorker("both", "old-password"), BuildbotWorker("mine", "x")]}
        with pytest.raises(ConfigErrors, match="'both' declared both"):
            Enrollment(reg_path).configure(c)

    def test_a_latent_name_is_not_a_duplicate_nor_added_twice(self, reg_path):
        from buildbot.worker import Worker as BuildbotWorker

        add(reg_path, "latent1")
        add(reg_path, "plain")
        enrollment = Enrollment(reg_path)
        enrollment.latent_names.add("latent1")  # what Enrollment.latent() records
        c = {"workers": [BuildbotWorker("latent1", "stands-in-for-the-latent-one")]}
        enrollment.configure(c)
        assert sorted(w.name for w in c["workers"]) == ["latent1", "plain"]


class TestDispatcherCheck:
    """pb_login_refusal: what the hook's PB dispatcher asks before Buildbot checks the password."""

    def setup(self, moved):
        registry = SimpleNamespace(
            workers={"w1": worker(legacy=True, moved=NOW if moved else None)},
            master=SimpleNamespace(legacy_pb="tcp:9989"),
        )
        enrollment = SimpleNamespace(gate=SimpleNamespace(registry=registry), tunnel_addresses=lambda: {LEG})
        # as in Buildbot: c['services'] are children of the master's service manager
        manager = SimpleNamespace(namedServices={"bbenroll": SimpleNamespace(enrollment=enrollment)})
        return SimpleNamespace(namedServices={"service_manager": manager}, service_manager=manager)

    def creds(self, name, host, port):
        peer = SimpleNamespace(host=host, port=port)
        return SimpleNamespace(username=name.encode(), broker=SimpleNamespace(transport=SimpleNamespace(
            getPeer=lambda: peer)))

    def test_a_moved_worker_from_its_tunnel_passes_and_directly_is_refused(self):
        master = self.setup(moved=True)
        assert pb_login_refusal(master, self.creds("w1", *LEG)) is None
        direct = pb_login_refusal(master, self.creds("w1", "127.0.0.1", 40002))
        assert direct == legacy.MOVED_ONLY_THROUGH_TUNNEL

    def test_a_legacy_worker_passes_directly(self):
        assert pb_login_refusal(self.setup(moved=False), self.creds("w1", "198.51.100.7", 1234)) is None

    def test_without_the_service_buildbot_decides(self):
        assert pb_login_refusal(SimpleNamespace(namedServices={}), self.creds("w1", "127.0.0.1", 1)) is None


class TestFollowPbPort:
    """follow_pb_port: a reconfig moves every worker's PB registration (Buildbot alone would not)."""

    def test_every_registered_worker_is_updated_with_the_new_config(self):
        from twisted.internet import defer

        from bbenroll.master.hook import follow_pb_port

        updated = []

        class Registration:
            def __init__(self, name, pb=True):
                self.worker = SimpleNamespace(workername=name)
                self.pbReg = object() if pb else None

            def update(self, worker, config):
                updated.append((worker.workername, config.protocols["pb"]["port"]))
                return defer.succeed(None)

        config = SimpleNamespace(protocols={"pb": {"port": "tcp:9990:interface=127.0.0.1"}})
        registrations = {"a": Registration("a"), "b": Registration("b"), "m": Registration("m", pb=False)}
        master = SimpleNamespace(config=config, workers=SimpleNamespace(registrations=registrations))
        d = follow_pb_port(master)
        assert d.called and d.result is None
        assert updated == [("a", "tcp:9990:interface=127.0.0.1"), ("b", "tcp:9990:interface=127.0.0.1")]

    def test_a_master_without_workers_is_left_alone(self):
        from bbenroll.master.hook import follow_pb_port

        assert follow_pb_port(SimpleNamespace()).called
