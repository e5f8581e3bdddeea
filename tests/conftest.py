"""Shared pytest configuration: fixtures that several test modules use."""

from __future__ import annotations

import logging

import pytest


@pytest.fixture(autouse=True)
def _quiet_foreign_loggers() -> None:
    """pymodbus logs every failure at ERROR with frame dumps; tests read our logs only."""
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
