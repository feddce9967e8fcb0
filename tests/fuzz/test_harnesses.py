"""Smoke-run every fuzz harness under Hypothesis, plus its seed corpus.

The harnesses in fuzz/ are plain ``one_input(data: bytes)`` functions; here each gets a few hundred
random inputs and every seed, so a harness that rots (or a regression it would catch) fails CI
without atheris.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
sys.path.insert(0, str(FUZZ))

HARNESSES = {
    "framing": "fuzz_framing",
    "timeout": "fuzz_timeout",
    "metadata": "fuzz_metadata",
    "server_connection": "fuzz_server_connection",
    "health_request": "fuzz_health_request",
}


def _harness(name: str) -> Callable[[bytes], None]:
    module = importlib.import_module(HARNESSES[name])
    fn: Callable[[bytes], None] = module.one_input
    return fn


@pytest.mark.parametrize("name", sorted(HARNESSES))
def test_seed_corpus(name: str) -> None:
    seeds = sorted((FUZZ / "corpus" / name).iterdir())
    assert seeds, f"no seeds for {name}"
    one_input = _harness(name)
    for seed in seeds:
        one_input(seed.read_bytes())


@pytest.mark.parametrize("name", sorted(HARNESSES))
def test_random_inputs(name: str) -> None:
    one_input = _harness(name)
    seeds = [p.read_bytes() for p in sorted((FUZZ / "corpus" / name).iterdir())]

    # Random bytes, and seeds with random bytes spliced in (closer to what a fuzzer explores).
    spliced = st.tuples(st.sampled_from(seeds), st.integers(0, 4096), st.binary(max_size=64)).map(
        lambda t: t[0][: t[1] % (len(t[0]) + 1)] + t[2] + t[0][t[1] % (len(t[0]) + 1) :]
    )

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(st.binary(max_size=512), spliced))
    def check(data: bytes) -> None:
        one_input(data)

    check()


def test_framing_harness_catches_disagreement() -> None:
    # The harness must be able to fail: a decoder that loses split messages is caught.
    mod = importlib.import_module("fuzz_framing")
    original = mod.MessageDecoder

    class Lossy(original):  # type: ignore[misc, valid-type]
        def feed(self, data: bytes) -> list[bytes]:
            return super().feed(data) if len(data) > 1 else []

    mod.MessageDecoder = Lossy
    try:
        with pytest.raises(AssertionError):
            mod.one_input(b"\x3f" + b"\x00\x00\x00\x00\x02ab")
    finally:
        mod.MessageDecoder = original


def test_server_connection_seeds_reach_a_whole_call() -> None:
    # Fed byte by byte, each seed (a real Check) still yields its request, message and end.
    mod = importlib.import_module("fuzz_server_connection")
    for seed in sorted((FUZZ / "corpus" / "server_connection").iterdir()):
        summary, end = mod.feed(seed.read_bytes(), 1)
        assert end is None
        assert [kind for kind, _, _ in summary] == ["request", "message", "end"]


def test_server_connection_harness_catches_disagreement(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The harness must be able to fail: a connection that drops one-byte pieces is caught.
    mod = importlib.import_module("fuzz_server_connection")
    original = mod.ServerConnection

    class Lossy(original):  # type: ignore[misc, valid-type]
        def receive_data(self, data: bytes) -> list[object]:
            return list(super().receive_data(data)) if len(data) != 1 else []

    monkeypatch.setattr(mod, "ServerConnection", Lossy)
    seed = sorted((FUZZ / "corpus" / "server_connection").iterdir())[0].read_bytes()
    with pytest.raises(AssertionError, match="byte-by-byte"):
        mod.one_input(seed)
