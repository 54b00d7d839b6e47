"""Hypothesis strategies for hostile tunnel input: well-typed frames with hostile values,
``received`` maps for a resume, and arbitrary values for the wire's schemas."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

from bbenroll.tunnel.frames import Ack, Close, Data, Open, Ping, Reset
from bbenroll.tunnel.wire import MAX_PAYLOAD

# what the wire lets through (wire.Offset: |x| < 2**64) and a bit past it: the core
# must not care how large a Python int is
EDGE_OFFSETS = (0, 1, -1, 2**31, 2**32, 2**62, 2**63 - 1, 2**63, -(2**63), 2**64 - 1)


def offsets(small: int = 64) -> st.SearchStrategy[int]:
    """Offsets near where a stream is (0..small), negative ones, and huge ones."""
    return st.one_of(
        st.integers(0, small),
        st.integers(-small, -1),
        st.sampled_from(EDGE_OFFSETS),
        st.integers(-(2**64) + 1, 2**64 - 1),
    )


def stream_ids(known: Sequence[int] = ()) -> st.SearchStrategy[int]:
    """Mostly streams the core knows (``known``) or small ids, sometimes any int32."""
    choices = [st.integers(0, 8), st.integers(-(2**31), 2**31 - 1)]
    if known:
        choices.insert(0, st.sampled_from(list(known)))
    return st.one_of(*choices)


def payloads(largest: int = MAX_PAYLOAD) -> st.SearchStrategy[bytes]:
    """Random short payloads, and long ones of one repeated byte (cheap to draw)."""
    filler = st.builds(lambda size, byte: bytes([byte]) * size, st.integers(0, largest), st.integers(0, 255))
    return st.one_of(st.binary(max_size=32), filler)


def frames(
    streams: st.SearchStrategy[int] | None = None,
    offset: st.SearchStrategy[int] | None = None,
    payload: st.SearchStrategy[bytes] | None = None,
) -> st.SearchStrategy[object]:
    """Any tunnel frame, its fields drawn from the given strategies (hostile by default)."""
    streams = streams if streams is not None else stream_ids()
    offset = offset if offset is not None else offsets()
    payload = payload if payload is not None else payloads()
    return st.one_of(
        st.builds(Open, streams),
        st.builds(Data, streams, offset, payload),
        st.builds(Ack, streams, offset),
        st.builds(Close, streams, offset),
        st.builds(Reset, streams),
        st.just(Ping()),
    )


def received_maps(known: Sequence[int] = ()) -> st.SearchStrategy[dict[int, int]]:
    """A peer's ``received`` on resume: random streams (ours among them) and offsets."""
    return st.dictionaries(stream_ids(known), offsets(), max_size=8)


# hashable: dictionary keys
wire_keys: st.SearchStrategy[object] = st.one_of(st.none(), st.integers(), st.floats(), st.text(max_size=4))

# anything a hostile peer could put in a frame method's arguments, were the schemas not there
wire_values: st.SearchStrategy[object] = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from((*EDGE_OFFSETS, 2**64, -(2**64), 2**31 - 1, -(2**31) - 1)),
        st.floats(allow_nan=True),
        st.text(max_size=8),
        st.binary(max_size=16),
        st.builds(lambda size: b"x" * size, st.sampled_from([MAX_PAYLOAD, MAX_PAYLOAD + 1])),
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(wire_keys, inner, max_size=3)),
    max_leaves=6,
)
