"""Fixtures of the demo tests: the default demo, written once, its reads and truth parsed."""

from __future__ import annotations

import pytest

from helixflow.app.demo import Demo, write_demo
from tests.app.demo_helpers import Reads, parse_reads, read_tsv


@pytest.fixture(scope="session")
def default_demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """The default demo (the one users get), written once for the session."""
    return write_demo(tmp_path_factory.mktemp("default") / "demo")


@pytest.fixture(scope="session")
def reads(default_demo: Demo) -> Reads:
    """Parsed reads of the default demo."""
    return parse_reads(default_demo)


@pytest.fixture(scope="session")
def truth(default_demo: Demo) -> list[dict[str, str]]:
    """Truth rows of the default demo."""
    return read_tsv(default_demo.truth)

