"""Everything that lists the services agrees with ``tidemark_contracts.services``."""

from __future__ import annotations

import importlib
import inspect
import tomllib
from pathlib import Path

import pytest
from tidemark_contracts.services import API_GATEWAY, SERVICES, ServiceDescription
from tidemark_devstack.readme import current_table, readme_path, render_table
from tidemark_platform.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[1]


def settings_class(service: ServiceDescription) -> type[ServiceSettings]:
    module = importlib.import_module(f"{service.package}.settings")
    defined = [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, ServiceSettings)
        and cls is not ServiceSettings
        and cls.__module__ == module.__name__
    ]
    assert len(defined) == 1, f"{module.__name__} must define one settings class: {defined}"
    return defined[0]


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_every_described_service_has_the_same_layout(service: ServiceDescription) -> None:
    directory = ROOT / service.directory
    package = directory / "src" / service.package
    for module in ("settings", "main"):
        assert (package / f"{module}.py").is_file(), f"{package}/{module}.py missing"
    project = tomllib.loads((directory / "pyproject.toml").read_text())
    assert project["project"]["name"] == f"tidemark-{service.name}"
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert wheel["packages"] == [f"src/{service.package}"]
    assert project["project"]["scripts"] == {f"tidemark-{service.name}": f"{service.module}:main"}


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_every_service_reads_its_settings_with_its_prefix_and_port(
    service: ServiceDescription,
) -> None:
    settings = settings_class(service)
    assert settings.model_config.get("env_prefix") == service.settings_prefix
    assert settings.model_fields["http_port"].default == service.default_port


def test_every_service_directory_is_described() -> None:
    directories = {p.name for p in (ROOT / "services").iterdir() if (p / "pyproject.toml").exists()}
    assert directories == {s.name for s in SERVICES}


def test_names_ports_and_prefixes_are_unique() -> None:
    for attribute in ("name", "package", "settings_prefix", "default_port"):
        values = [getattr(s, attribute) for s in SERVICES]
        assert len(values) == len(set(values)), attribute


def test_the_gateway_waits_for_every_other_service() -> None:
    settings = settings_class(API_GATEWAY)
    expected = settings.model_fields["expected_services"].get_default(call_default_factory=True)
    assert expected == [s.name for s in SERVICES if s is not API_GATEWAY]


def test_the_readme_lists_the_services_as_described() -> None:
    table = current_table(readme_path().read_text())
    assert table is not None, "README.md lost the generated services table's markers"
    assert table == render_table(), "README.md disagrees with the registry: run `make schemas`"
