"""A bounded run of the differential engine harness (fuzz/fuzz_engines.py) in CI.

Each input is a program of client steps fed to a ServerConnection on the h2 engine and one on
the native engine; the harness raises when their gRPC-level outcomes part in a way the README's
engine table does not list. The inputs below are ones the harness once failed on (each a bug in
the h2 adapter since fixed); Hypothesis adds a few hundred new ones per run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "fuzz"))

from fuzz_engines import one_input

FOUND = [
    # PING of 7 bytes on a stream: native checks the stream id first (PROTOCOL_ERROR).
    "8e50f25df091e8d90ad8bff6b39ba77eb6a4e775a36f5fdf892d3560964a022326455556ca5eb71756c79e"
    "090a452926fb954a5c65fd8c214b1d7abb3def0c4e2ddb",
    # DATA on a stream closed both ways: a connection error STREAM_CLOSED, not a reset.
    "9e189d2a5b417743722f656b5c18512642dbca2d5672c5145fcb5f44dea95ad12669f73433289575fe986d"
    "a8cb96b43ec3005d22077068f8eb91cffa18d70dfe634a9fb0336e00deb59d3a679df17cd7f17e996cfb67"
    "ed670f4f2d2adcd4521f819f732893de633ab7204104f4e775c9c5507add5982c1384f91d5077db2234534"
    "5f03dc499f6ef5bb3ae90138dacb9b6322dc40b8f2a293cd8d33c520e6fc63",
    # An empty PADDED DATA frame: PROTOCOL_ERROR (h2 said FRAME_SIZE_ERROR).
    "dffc2ad25e",
    # A CONTINUATION on a closed stream: PROTOCOL_ERROR (h2 said STREAM_CLOSED).
    "a62679fec6225d32b15f71a2472932a37c133a38d3a0c9e936b52a6fb9c35d8dc675b3685e2729922edb69"
    "a8575af1fc4d1cf8089fc9",
    # DATA on a stream never opened below the highest: one RST_STREAM, not a connection error.
    "2619e2f324d3dde537e3efb339cf24e5ea16c3817780696760d0f982becd666e45e955f1c1ad4709572450c0"
    "cbd233a149e819b0755344",
    # A burst of DATA after END_STREAM on a call the gRPC layer ended (the engine table).
    "29787ac45bb0385d1665132bec62aa79171060ef151d3c03b2fa40f8fe90555fe657c09659cd9f708c5fdc04"
    "9543f3f2ed5a89dad575d73c44b8d38623f66e5fb31f91e300fa1f024b1e74236937a85d8c0ae63fac2fa317"
    "5fc18d4ea49890be3ff72fbfb5e39235bc7ac33beb1ee6200fc7bc24fcd5a6a321c3728316776210a68742b2"
    "6f88",
    # A 1-byte HEADERS with PADDED and PRIORITY: FRAME_SIZE_ERROR on both (section 4.2, too
    # small for its mandatory fields; native said PROTOCOL_ERROR, judging the padding first).
    b"\x0f\x01(\x00\x01\x01".hex(),
]


@pytest.mark.parametrize("program", FOUND)
def test_found_inputs(program: str) -> None:
    one_input(bytes.fromhex(program))


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.binary(min_size=1, max_size=300))
def test_engines_agree_on_random_programs(data: bytes) -> None:
    one_input(data)
