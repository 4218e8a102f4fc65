"""The README's table of services, generated from ``tidemark_contracts.services``.

The table sits between two markers in README.md; ``make schemas`` rewrites it and a test
fails while the committed README disagrees with the registry.
"""

from __future__ import annotations

from pathlib import Path

from tidemark_contracts.services import SERVICES, ServiceDescription
from tidemark_contracts.topics import Topic

from tidemark_devstack.paths import repo_root

BEGIN = "<!-- services: generated from tidemark_contracts.services by `make schemas` -->"
END = "<!-- end of services -->"


def _topics(topics: tuple[Topic, ...]) -> str:
    return ", ".join(f"`{topic.name}`" for topic in topics) or "—"


def _row(service: ServiceDescription) -> str:
    return (
        f"| **{service.name}** | `{service.directory}` | `{service.package}` "
        f"| `{service.settings_prefix}` | {service.default_port} "
        f"| {_topics(service.consumes)} | {_topics(service.produces)} "
        f"| {service.description} |"
    )


def render_table() -> str:
    """The generated block, markers included."""
    lines = [
        BEGIN,
        "| service | directory | package | settings prefix | default `HTTP_PORT` "
        "| consumes | produces | what it does |",
        "|---|---|---|---|---|---|---|---|",
        *(_row(service) for service in SERVICES),
        END,
    ]
    return "\n".join(lines)


def readme_path() -> Path:
    return repo_root() / "README.md"


def current_table(text: str) -> str | None:
    """The generated block as README.md holds it, or None without both markers."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        return None
    return text[start : end + len(END)]


def update(path: Path) -> bool:
    """Rewrite the block in ``path``; True when it changed."""
    text = path.read_text()
    block = current_table(text)
    if block is None:
        raise SystemExit(f"{path}: the markers {BEGIN!r} and {END!r} are missing")
    new = text.replace(block, render_table())
    if new == text:
        return False
    path.write_text(new)
    return True


if __name__ == "__main__":
    path = readme_path()
    print(f"{path}: {'updated' if update(path) else 'current'}")
