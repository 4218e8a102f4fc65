"""A local destination's path: relative, inside the organization's directory, said plainly."""

from __future__ import annotations

import pytest
from tidemark_contracts.backup import (
    LOCAL_NAME_MAX_BYTES,
    LOCAL_PATH_MAX_BYTES,
    local_path_problem,
)


@pytest.mark.parametrize(
    "path", ["backups", "team/db-backups", "a/b/c", "nächtlich", "x y", ".hidden"]
)
def test_relative_directory_names_are_accepted(path: str) -> None:
    assert local_path_problem(path) is None


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/etc", "not absolute"),
        ("/", "not absolute"),
        ("//srv/x", "not absolute"),
        ("../../etc", "'..'"),
        ("..", "'..'"),
        ("a/../b", "'..'"),
        ("a/..", "'..'"),
        ("", "must name a directory inside the organization's directory"),
        (".", "must name a directory inside the organization's directory"),
        ("./.", "must name a directory inside the organization's directory"),
        ("a//b", "empty or '.' components"),
        ("./a", "empty or '.' components"),
        ("a/", "empty or '.' components"),
        ("a\x00b", "NUL or control characters"),
        ("a\nb", "NUL or control characters"),
        ("a\x7fb", "NUL or control characters"),
        ("a\\b", "backslashes"),
        ("..\\..\\etc", "backslashes"),
        ("a\udc80b", "valid UTF-8"),
        ("a/" * (LOCAL_PATH_MAX_BYTES // 2) + "a", f"at most {LOCAL_PATH_MAX_BYTES} bytes"),
        ("x" * (LOCAL_NAME_MAX_BYTES + 1), f"at most {LOCAL_NAME_MAX_BYTES} bytes"),
    ],
)
def test_paths_that_could_lead_out_or_mislead_are_refused_with_the_reason(
    path: str, reason: str
) -> None:
    problem = local_path_problem(path)
    assert problem is not None
    assert reason in problem
    if path.strip("/."):
        assert path not in problem, "the reason never repeats the value"
