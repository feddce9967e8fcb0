"""Shared runner for the harnesses: ``python fuzz/<harness>.py [atheris args]``.

Each harness module defines ``one_input(data: bytes) -> None``, which raises only when it finds a
bug (an exception other than the ones the code under test is documented to raise, or a broken
invariant). ``run(one_input)`` hands it to atheris with the seed corpus of the harness.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"


def run(one_input: Callable[[bytes], None], name: str) -> None:
    """Fuzz ``one_input`` with atheris, seeded from ``fuzz/corpus/<name>``."""
    import atheris  # type: ignore[import-not-found]  # only needed when fuzzing for real

    seeds = CORPUS / name
    args = [*sys.argv]
    if not any(not a.startswith("-") for a in args[1:]):
        # libFuzzer writes new inputs into the first corpus folder: keep the committed seeds
        # read-only by giving it a scratch folder first.
        work = Path(__file__).resolve().parent / ".work" / name
        work.mkdir(parents=True, exist_ok=True)
        args += [str(work), str(seeds)]
    # Instrument what is already imported (the code under test) for coverage feedback.
    atheris.instrument_all()
    atheris.Setup(args, one_input)
    atheris.Fuzz()
