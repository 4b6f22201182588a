"""Settings from one source: every ServerSettings field is a `vlm-course serve` option and a RayServeConfig
field, with the same default, and survives both round trips (the finding: --ray dropped five options)."""

from __future__ import annotations

import dataclasses

import pytest

from _need import need  # skips outside CI, fails in CI

need("pydantic")

from vlm_course.serve import build_parser, main  # noqa: E402
from vlm_course.serve.ray_app import RayServeConfig  # noqa: E402
from vlm_course.serve.settings import ServerSettings, default_of, from_arguments  # noqa: E402

CHANGED = dict(model="some/dir", dtype="bfloat16", attn="eager", quant="bnb-4bit", device="cpu", adapter="some/adapter",
               api_key="k",
               max_batch_size=3, max_wait_ms=2.5, allow_dirs=["/a", "/b"], allow_private_urls=True, max_images=2,
               max_body_bytes=1234, max_image_bytes=999, max_image_pixels=4321, max_request_pixels=8642,
               url_timeout=1.5, default_max_tokens=7, shutdown_grace_s=0.5)


def test_the_test_changes_every_field():
    assert set(CHANGED) == {f.name for f in dataclasses.fields(ServerSettings)}
    assert all(CHANGED[f.name] != default_of(f) for f in dataclasses.fields(ServerSettings))


def test_cli_options_cover_every_field():
    argv = []
    for name, value in CHANGED.items():
        flag = "--allow-dir" if name == "allow_dirs" else "--" + name.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):
            for v in value:
                argv += [flag, v]
        else:
            argv += [flag, str(value)]
    assert from_arguments(build_parser().parse_args(argv)) == ServerSettings(**CHANGED)
    assert from_arguments(build_parser().parse_args([])) == ServerSettings()


def test_ray_config_round_trip_keeps_every_field():
    settings = ServerSettings(**CHANGED)
    config = RayServeConfig.from_settings(settings, num_replicas=2)
    assert config.server_settings() == settings and config.num_replicas == 2
    assert RayServeConfig().server_settings() == ServerSettings()


@pytest.mark.parametrize("field", ["max_batch_size", "max_images", "url_timeout"])
def test_bounds_hold_everywhere(field):
    with pytest.raises(ValueError):
        ServerSettings(**{field: 0})
    with pytest.raises(ValueError):
        RayServeConfig(**{field: 0})
    with pytest.raises(SystemExit):  # the command line says which option is out of range, and exits 2
        main(["--" + field.replace("_", "-"), "0"])
