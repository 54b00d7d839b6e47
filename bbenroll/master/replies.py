"""What a client is told of its own bad call: never our objects' reprs, addresses or module paths.

Foolscap describes a schema :class:`~foolscap.tokens.Violation` by its receive
stack (``<methodcall reqID=3 obj=<bbenroll.master.service.EnrolledWorker object
at 0x7f...> ...>``), and many of its constraints put the offending object's
repr in the message (``'<RemoteReference at 0x...>' does not provide ...``).
The master answers instead with a reason made from the schema itself: which
method, which argument, and what that argument must be
(:func:`describe_violation`), sent by :class:`SchemaReplies`, the master's
Broker's mixin. Nothing of the original text is kept, so no repr can slip
through whatever constraint raised it. Any other failure of a call but a
:class:`~bbenroll.tunnel.wire.Refused` (whose type is the wire contract) is our
fault: it is logged on the master with its traceback (Foolscap's own logging
of local failures is off, ``logLocalFailures``) and the client is told only
:data:`INTERNAL_ERROR`.
"""

from __future__ import annotations

from typing import Any

from foolscap import call, constraint, remoteinterface
from foolscap.broker import Broker
from foolscap.slicers.bool import BooleanConstraint
from foolscap.slicers.dict import DictConstraint
from foolscap.slicers.unicode import UnicodeConstraint
from foolscap.tokens import Violation
from twisted.logger import Logger
from twisted.python.failure import Failure

from bbenroll.tunnel.wire import Refused

log = Logger(namespace="bbenroll")

INTERNAL_ERROR = "internal error on the master (its log has the details)"


def describe_constraint(rule: Any) -> str:
    """What a value must be to pass ``rule``, in a few words."""
    if isinstance(rule, constraint.ByteStringConstraint):
        return f"bytes of at most {rule.maxLength}" if rule.maxLength is not None else "bytes"
    if isinstance(rule, UnicodeConstraint):
        return f"text of at most {rule.maxLength} characters" if rule.maxLength is not None else "text"
    if isinstance(rule, constraint.IntegerConstraint):
        if rule.maxBytes == -1:
            return "a 32-bit integer"
        return f"an integer of at most {rule.maxBytes} bytes" if rule.maxBytes is not None else "an integer"
    if isinstance(rule, BooleanConstraint):
        return "a boolean"
    if isinstance(rule, DictConstraint):
        size = f"a dict of at most {rule.maxKeys} keys" if rule.maxKeys is not None else "a dict"
        keys, values = describe_constraint(rule.keyConstraint), describe_constraint(rule.valueConstraint)
        return f"{size} ({keys} -> {values})"
    if isinstance(rule, remoteinterface.RemoteInterfaceConstraint):
        interface = rule.interface
        return f"a reference to a {interface.__remote_name__}" if interface is not None else "a reference"
    return "what the schema allows"


def _method(schema: Any) -> str:
    return f"{schema.name}()" if schema is not None else "the call"


def _argument_in_receipt(arguments: call.ArgumentUnslicer) -> str | None:
    """The argument ``arguments`` was receiving when it broke, with its rule."""
    schema = arguments.methodSchema
    if schema is None or arguments.numargs is None:
        return None
    if len(arguments.args) < arguments.numargs:  # a positional one
        position = len(arguments.args)
        if position >= len(schema.argumentNames):
            return f"takes {len(schema.argumentNames)} arguments"
        name = schema.argumentNames[position]
    elif arguments.argname is not None and arguments.argname in schema.argConstraints:
        name = arguments.argname
    else:
        return "no such argument"
    return f"argument {name!r} must be {describe_constraint(schema.argConstraints[name])}"


def _argument_in_delivery(schema: Any, args: Any, kwargs: Any) -> str | None:
    """The first argument of a complete call that breaks its rule (checked as Foolscap does)."""
    values = dict(zip(schema.argumentNames, args, strict=False))
    values.update(kwargs)
    for name in schema.argumentNames:
        if name not in values:
            if name in schema.required:
                return f"argument {name!r} is missing"
            continue
        rule = schema.argConstraints[name]
        try:
            rule.checkObject(values[name], True)
        except Exception:  # Violation, or whatever a constraint raises on odd input
            return f"argument {name!r} must be {describe_constraint(rule)}"
    return None


def describe_violation(receive_stack: list[Any] | None = None, delivery: Any = None) -> str | None:
    """A reason for a Violation of an inbound call, from the schema only; None if
    the caller is not at fault (the call's arguments pass, so our answer broke the rule).

    ``receive_stack``: the Broker's unslicers when the call broke while arriving
    (the innermost last); ``delivery``: the complete call, when it broke the
    schema's check of all arguments, or its answer broke the return rule.
    """
    if delivery is not None:
        schema = delivery.methodSchema
        if schema is None:
            return "bad call: it breaks the schema"
        detail = _argument_in_delivery(schema, delivery.allargs.args, delivery.allargs.kwargs)
        return f"bad call of {_method(schema)}: {detail}" if detail is not None else None
    calls = [u for u in receive_stack or () if isinstance(u, call.CallUnslicer)]
    if not calls:
        return "bad call: it breaks the schema"
    unslicer = calls[-1]
    if unslicer.stage == 1:
        return "bad call: no such object"
    if unslicer.stage >= 3 and unslicer.interface is not None and unslicer.methodSchema is None:
        return f"bad call: no such method in {unslicer.interface.__remote_name__}"
    arguments = [u for u in receive_stack or () if isinstance(u, call.ArgumentUnslicer)]
    detail = _argument_in_receipt(arguments[-1]) if arguments else None
    return f"bad call of {_method(unslicer.methodSchema)}: {detail or 'it breaks the schema'}"


class SchemaReplies:
    """A mixin for a :class:`~foolscap.broker.Broker`: a call's Violation is
    answered with :func:`describe_violation`'s reason, as a plain Violation;
    a failure that is neither that nor a Refused, with :data:`INTERNAL_ERROR`."""

    _receiving: list[Any] | None = None  # the receive stack while a Violation is being handled

    def handleViolation(self, f: Failure, methname: str, inOpen: bool = False, inClose: bool = False) -> None:
        # Foolscap pops the unslicers on the way to callFailed: keep them for the reason
        self._receiving = list(self.receiveStack)
        try:
            Broker.handleViolation(self, f, methname, inOpen, inClose)
        finally:
            self._receiving = None

    def callFailed(self, f: Failure, reqID: int, delivery: Any = None) -> None:
        if not f.check(Refused):  # a refusal is told as it is: its type is the wire contract
            reason = describe_violation(self._receiving, delivery) if f.check(Violation) else None
            if reason is not None:
                f = Failure(Violation(reason))
            else:
                method = getattr(delivery, "methodname", None) or "?"
                log.failure("bbenroll: internal error in a worker's call of {method}", f, method=method)
                f = Failure(Exception(INTERNAL_ERROR))
        Broker.callFailed(self, f, reqID, delivery)
