"""Fixtures for the messaging tests (helpers live in mq_helpers.py)."""

from __future__ import annotations

import pytest

from tests.queue.mq_helpers import unique


@pytest.fixture
def name() -> str:
    """A unique queue/subject/topic/stream name for one test."""
    return unique("q")
