"""What several test modules need of the machine: command-line tools, and the pinned upstream versions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def in_ci() -> bool:
    """CI=true: a missing tool is a failure there, not a skip."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(tool: str | None, name: str) -> str:
    """``tool``'s path. A missing tool skips the test that needs it, saying so, and fails it in CI."""
    if tool:
        return tool
    message = f"{name} is not installed (it comes with the dev extra: pip install -e '.[dev]')"
    if in_ci():
        pytest.fail(f"{message}; CI=true, where a missing tool is a failure")
    pytest.skip(message)


def versions() -> dict[str, str]:
    """manifests/upstream/versions.env as a dict."""
    lines = (ROOT / "manifests" / "upstream" / "versions.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))
