"""master/binding.py: the pure rule of FURL-to-key binding."""

from __future__ import annotations

import pytest
from foolscap.referenceable import TubRef

from bbenroll.errors import WrongState
from bbenroll.master import binding, gate
from bbenroll.registry import model
from tests.helpers.binding import KEY_A, KEY_B
from tests.helpers.cli import FIXED_NOW

ACCEPTED = gate.Decision(True, gate.Reason.CURRENT, "w1")


class Broker:
    def __init__(self, tubref):
        self.remote_tubref = tubref


def test_an_unbound_worker_or_its_own_key_keeps_the_gates_decision():
    plain = model.new_worker("w1", FIXED_NOW)
    bound = model.bind(plain, KEY_A, FIXED_NOW)
    assert binding.check(ACCEPTED, plain, KEY_B) is ACCEPTED
    assert binding.check(ACCEPTED, plain, None) is ACCEPTED
    assert binding.check(ACCEPTED, bound, KEY_A) is ACCEPTED
    refused = gate.Decision(False, gate.Reason.REVOKED, "w1")
    assert binding.check(refused, bound, KEY_B) is refused  # a refusal stays what it was


def test_another_key_is_refused_telling_the_client_only_its_own_key():
    bound = model.bind(model.new_worker("w1", FIXED_NOW), KEY_A, FIXED_NOW)
    decision = binding.check(ACCEPTED, bound, KEY_B)
    assert not decision.accepted and decision.reason is gate.Reason.WRONG_KEY and decision.worker == "w1"
    assert KEY_B in decision.message and KEY_A not in decision.message
    assert "bbenroll rebind NAME" in decision.message
    assert decision.describe() == "worker 'w1': this FURL is bound to another worker key"  # the guard's count
    assert binding.describe_keys(decision) == f" (bound to worker key {KEY_A}, presented {KEY_B})"
    assert binding.describe_keys(ACCEPTED) == ""
    none = binding.check(ACCEPTED, bound, None)
    assert not none.accepted and "this worker's key" not in none.message
    assert "presented no key" in binding.describe_keys(none)


def test_client_key_takes_only_well_formed_tubids():
    assert binding.client_key(Broker(TubRef(KEY_A))) == KEY_A
    assert binding.client_key(Broker(TubRef("worker"))) is None
    assert binding.client_key(Broker(None)) is None
    assert binding.client_key(object()) is None


def test_bind_answer():
    plain = model.new_worker("w1", FIXED_NOW)
    bound = model.bind(plain, KEY_A, FIXED_NOW)
    assert binding.bind_answer(plain, bound) == {"status": "bound", "fingerprint": KEY_A}
    assert binding.bind_answer(bound, bound) == {"status": "already", "fingerprint": KEY_A}


class Editor:
    def __init__(self, worker):
        self.worker_ = worker
        self.updated = []

    def worker(self, name):
        return self.worker_

    def update(self, worker):
        self.updated.append(worker)


def test_bind_edit_applies_to_the_worker_as_on_disk():
    plain = model.new_worker("w1", FIXED_NOW)
    outcome: dict[str, str] = {}
    editor = Editor(plain)
    binding.bind_edit("w1", KEY_A, FIXED_NOW, outcome)(editor)
    assert outcome == {"status": "bound", "fingerprint": KEY_A}
    assert editor.updated[0].bound == model.Bound(KEY_A, FIXED_NOW)
    with pytest.raises(WrongState, match="revoked"):
        binding.bind_edit("w1", KEY_A, FIXED_NOW, {})(Editor(model.revoke(plain, FIXED_NOW)))
    with pytest.raises(WrongState, match="bound to another worker key"):
        binding.bind_edit("w1", KEY_B, FIXED_NOW, {})(Editor(editor.updated[0]))
