"""Shared fixtures. Tests run offline (no model hub) on the bundled tiny model."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # a spinning OpenMP pool starves other test processes

import pytest


@pytest.fixture(scope="session")
def vlm():
    """The bundled tiny Idefics2, loaded once for the whole test session."""
    from vlm_course.models import load_vlm

    return load_vlm(device="cpu")
