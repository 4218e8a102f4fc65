"""JSON Schemas of every message, as pinned in ``libs/contracts/schemas/`` and AsyncAPI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tidemark_contracts.envelope import Envelope
from tidemark_contracts.topics import all_messages

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"


def message_schemas() -> dict[str, dict[str, Any]]:
    """``{"<messageType>.v<version>": JSON Schema}`` for every message and the envelope."""
    schemas: dict[str, dict[str, Any]] = {
        "Envelope.v1": Envelope.model_json_schema(by_alias=True, mode="serialization")
    }
    for message in all_messages():
        version = message.model_fields["version"].default
        schemas[f"{message.message_type}.v{version}"] = message.model_json_schema(
            by_alias=True, mode="serialization"
        )
    return schemas


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_pinned(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in message_schemas().items():
        path = directory / f"{name}.json"
        path.write_text(render(schema))
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write_pinned():
        print(written_path)
