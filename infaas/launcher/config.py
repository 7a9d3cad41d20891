"""Rendering the stack's configuration files from the templates in `infra/` (`@@NAME@@` placeholders)."""

from __future__ import annotations

from pathlib import Path

from ..credentials import write_private


def render(templates: list[Path], target: Path, values: dict[str, str]) -> None:
    text = "\n".join(template.read_text() for template in templates)
    for key, value in values.items():
        text = text.replace(f"@@{key}@@", value)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_private(target, text)  # may hold the admin's password
