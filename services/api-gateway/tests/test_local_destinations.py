"""A local destination's path at registration: relative, and through no symbolic link."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError
from tidemark_api_gateway.application import link_below
from tidemark_api_gateway.schemas import CreateDestination

ORG = uuid.uuid4()


def local(path: str) -> dict[str, object]:
    return {"name": "d", "type": "local", "config": {"path": path}}


def test_a_relative_path_is_accepted_as_given() -> None:
    spec = CreateDestination.model_validate(local("team/nightly")).root
    assert spec.config.model_dump(by_alias=True) == {"path": "team/nightly"}


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/etc", "not absolute"),
        ("../../etc", "'..'"),
        (".", "must name a directory"),
        ("a\\b", "backslashes"),
        ("a\x01b", "control characters"),
    ],
)
def test_a_path_that_leads_out_is_refused_at_config_path_without_its_value(
    path: str, reason: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        CreateDestination.model_validate(local(path))
    [error] = raised.value.errors()
    assert error["loc"][-2:] == ("config", "path")
    assert reason in error["msg"]
    assert path not in error["msg"]


def test_the_openapi_field_documents_the_rule() -> None:
    schema = CreateDestination.model_json_schema(by_alias=True)
    path = schema["$defs"]["LocalConfigIn"]["properties"]["path"]
    assert "relative to the organization's directory" in path["description"]
    assert (path["minLength"], path["maxLength"]) == (1, 256)


def test_no_link_below_the_root_when_nothing_exists_yet(tmp_path: Path) -> None:
    assert not link_below(tmp_path, ORG, "a/b")
    (tmp_path / str(ORG) / "a").mkdir(parents=True)
    assert not link_below(tmp_path, ORG, "a/b")


@pytest.mark.parametrize("link", ["{org}", "{org}/a", "{org}/a/b"])
def test_a_link_anywhere_below_the_root_is_found(tmp_path: Path, link: str) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = tmp_path / "root"
    at = root / link.format(org=ORG)
    at.parent.mkdir(parents=True, exist_ok=True)
    at.symlink_to(elsewhere, target_is_directory=True)
    assert link_below(root, ORG, "a/b")


def test_a_file_in_the_way_is_left_for_the_runner_to_report(tmp_path: Path) -> None:
    (tmp_path / str(ORG)).mkdir()
    (tmp_path / str(ORG) / "a").write_text("not a directory")
    assert not link_below(tmp_path, ORG, "a/b")
