"""Local destinations stay inside ``<root>/<organization>/``: no path, no link leads out."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from tidemark_backup_runner.storage import DestinationRefused, LocalArtifactWriter, writer_for
from tidemark_contracts.backup import DestinationTarget

ORG = uuid.uuid4()
KEY = "env/b.pgdump.zst"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """Where a link leads: outside the root."""
    path = tmp_path / "elsewhere"
    path.mkdir()
    return path


def files_in(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if p.is_file() or p.is_symlink()]


def refused_on_open(writer: LocalArtifactWriter, root: Path) -> str:
    with pytest.raises(DestinationRefused) as raised:
        writer.open()
    reason = str(raised.value)
    assert str(root) not in reason, "a reason never shows the runner's own paths"
    assert raised.value.filename is None
    return reason


def test_the_artifact_lands_under_the_organizations_directory(root: Path) -> None:
    target = DestinationTarget.of(uuid.uuid4(), "disk", "local", {"path": "team/backups"})
    writer = writer_for(target, ORG, KEY, "t", local_root=root)
    writer.open()
    writer.write(b"dump")
    assert writer.commit() == KEY
    assert (root / str(ORG) / "team/backups" / KEY).read_bytes() == b"dump"


def test_a_symlinked_organization_directory_is_refused(root: Path, elsewhere: Path) -> None:
    (root / str(ORG)).symlink_to(elsewhere, target_is_directory=True)
    writer = LocalArtifactWriter(root, ORG, "backups", KEY, label="destination 'd'")
    reason = refused_on_open(writer, root)
    assert reason.startswith("destination 'd': <organization> is a symbolic link")
    assert files_in(elsewhere) == []
    assert list(elsewhere.iterdir()) == []


def test_an_organization_directory_linked_to_another_organizations_is_refused(
    root: Path,
) -> None:
    theirs = root / str(uuid.uuid4())
    (theirs / "backups").mkdir(parents=True)
    (root / str(ORG)).symlink_to(theirs, target_is_directory=True)
    refused_on_open(LocalArtifactWriter(root, ORG, "backups", KEY), root)
    assert list((theirs / "backups").iterdir()) == []


def test_a_symlink_at_an_intermediate_directory_is_refused(root: Path, elsewhere: Path) -> None:
    (root / str(ORG)).mkdir()
    (root / str(ORG) / "a").symlink_to(elsewhere, target_is_directory=True)
    reason = refused_on_open(LocalArtifactWriter(root, ORG, "a/b", KEY), root)
    assert "<organization>/a is a symbolic link" in reason
    assert list(elsewhere.iterdir()) == []


def test_a_symlink_at_the_destination_directory_is_refused(root: Path, elsewhere: Path) -> None:
    (root / str(ORG) / "a").mkdir(parents=True)
    (root / str(ORG) / "a" / "b").symlink_to(elsewhere, target_is_directory=True)
    reason = refused_on_open(LocalArtifactWriter(root, ORG, "a/b", KEY), root)
    assert "<organization>/a/b is a symbolic link" in reason
    assert list(elsewhere.iterdir()) == []


def test_a_symlink_at_the_environments_directory_is_refused(root: Path, elsewhere: Path) -> None:
    (root / str(ORG) / "backups").mkdir(parents=True)
    (root / str(ORG) / "backups" / "env").symlink_to(elsewhere, target_is_directory=True)
    refused_on_open(LocalArtifactWriter(root, ORG, "backups", KEY), root)
    assert list(elsewhere.iterdir()) == []


def test_a_dangling_symlink_is_refused_not_followed_into_existence(
    root: Path, elsewhere: Path
) -> None:
    (root / str(ORG)).mkdir()
    (root / str(ORG) / "backups").symlink_to(elsewhere / "made-by-us", target_is_directory=True)
    refused_on_open(LocalArtifactWriter(root, ORG, "backups", KEY), root)
    assert list(elsewhere.iterdir()) == []


def test_a_symlink_that_stays_inside_is_refused_too(root: Path) -> None:
    # It could be pointed elsewhere after any check; only real directories are written.
    (root / str(ORG) / "real").mkdir(parents=True)
    (root / str(ORG) / "alias").symlink_to(root / str(ORG) / "real", target_is_directory=True)
    refused_on_open(LocalArtifactWriter(root, ORG, "alias", KEY), root)
    assert list((root / str(ORG) / "real").iterdir()) == []


def test_a_directory_swapped_for_a_symlink_before_commit_stores_nothing(
    root: Path, elsewhere: Path
) -> None:
    writer = LocalArtifactWriter(root, ORG, "backups", KEY)
    writer.open()
    writer.write(b"dump")
    # Between open and commit, the destination's directory is moved out of the root and
    # a link to where it went takes its place.
    moved = elsewhere / "moved"
    (root / str(ORG) / "backups").rename(moved)
    (root / str(ORG) / "backups").symlink_to(moved, target_is_directory=True)
    with pytest.raises(DestinationRefused, match="replaced or moved"):
        writer.commit()
    assert files_in(moved) == [], "neither the artifact nor our partial copy stays outside"
    writer.abort()
    writer.discard()
    assert files_in(moved) == []


def test_a_directory_moved_away_before_commit_stores_nothing(root: Path, elsewhere: Path) -> None:
    writer = LocalArtifactWriter(root, ORG, "a/b", KEY)
    writer.open()
    writer.write(b"dump")
    (root / str(ORG) / "a").rename(elsewhere / "a")
    (root / str(ORG) / "a").mkdir()
    with pytest.raises(DestinationRefused):
        writer.commit()
    assert files_in(elsewhere) == []
    assert files_in(root) == []


def test_discard_never_removes_anything_through_a_link(root: Path, elsewhere: Path) -> None:
    (root / str(ORG) / "backups").mkdir(parents=True)
    (root / str(ORG) / "backups" / "env").symlink_to(elsewhere, target_is_directory=True)
    victim = elsewhere / "b.pgdump.zst"
    victim.write_bytes(b"not ours")
    partial = elsewhere / ".b.pgdump.zst.x.partial"
    partial.write_bytes(b"not ours either")
    LocalArtifactWriter(root, ORG, "backups", KEY).discard()
    assert victim.read_bytes() == b"not ours"
    assert partial.exists()


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/etc", "not absolute"),
        ("../../etc", "'..'"),
        ("a/../../b", "'..'"),
        ("", "must name a directory"),
        (".", "must name a directory"),
        ("a\\b", "backslashes"),
        ("a\x00b", "control characters"),
    ],
)
def test_an_invalid_path_is_refused_before_anything_is_created(
    root: Path, path: str, reason: str
) -> None:
    message = refused_on_open(LocalArtifactWriter(root, ORG, path, KEY), root)
    assert "config.path" in message
    assert reason in message
    assert list(root.iterdir()) == []
    LocalArtifactWriter(root, ORG, path, KEY).discard()  # nothing to remove, no error


def test_without_a_root_local_destinations_are_refused(tmp_path: Path) -> None:
    writer = LocalArtifactWriter(None, ORG, "backups", KEY, label="destination 'd'")
    with pytest.raises(DestinationRefused, match="no destination root"):
        writer.open()
    writer.discard()


def test_a_missing_root_fails_without_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "not-mounted"
    with pytest.raises(FileNotFoundError, match="destination root is unavailable") as raised:
        LocalArtifactWriter(missing, ORG, "backups", KEY).open()
    assert str(missing) not in str(raised.value)
    assert not missing.exists(), "an unmounted root is not created on the disk beneath"


def test_a_file_in_the_way_is_named_relative_to_the_organization(root: Path) -> None:
    (root / str(ORG)).mkdir()
    (root / str(ORG) / "backups").write_text("a file where a directory should be")
    with pytest.raises(NotADirectoryError) as raised:
        LocalArtifactWriter(root, ORG, "backups", KEY).open()
    assert raised.value.filename == "<organization>/backups"
    assert str(root) not in str(raised.value)


def test_a_partial_file_name_taken_by_a_link_is_not_followed(root: Path, elsewhere: Path) -> None:
    directory = root / str(ORG) / "backups" / "env"
    directory.mkdir(parents=True)
    (directory / ".b.pgdump.zst.t.partial").symlink_to(elsewhere / "x")
    with pytest.raises(FileExistsError):
        LocalArtifactWriter(root, ORG, "backups", KEY, "t").open()
    assert list(elsewhere.iterdir()) == []
