"""Shared fixtures. Tests run offline (no model hub) on the bundled tiny model."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # a spinning OpenMP pool starves other test processes

import pytest


def pytest_configure(config):
    """CI runs every test: register tests/_need.py's hooks, which fail a CI=true run that skipped anything."""
    import _need

    config.pluginmanager.register(_need, "vlm-course-no-skips-in-ci")


@pytest.fixture(scope="session")
def vlm():
    """The bundled tiny Idefics2, loaded once for the whole test session."""
    from vlm_course.models import load_vlm

    return load_vlm(device="cpu")


@pytest.fixture(scope="session")
def test_model_dir(tmp_path_factory):
    """An idefics2-8b-shaped random-weight model (vlm_course.testmodel), built once for the session."""
    from vlm_course.testmodel import build_test_model

    return build_test_model(tmp_path_factory.mktemp("idefics2-8b-test"))


@pytest.fixture(scope="session")
def test_vlm(test_model_dir):
    """The idefics2-8b-shaped test model, loaded once (float32, CPU)."""
    from vlm_course.models import load_vlm

    return load_vlm(test_model_dir, device="cpu")
