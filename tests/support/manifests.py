"""The weight-file manifests in ../shared/reference (tests only: users never have them)."""

import json
from pathlib import Path

import pytest

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference"


def load_manifest(name: str) -> dict[str, list[int]]:
    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(f"manifest {name} not found at {path} (../shared/reference is absent)")
    return json.loads(path.read_text())["keys"]
