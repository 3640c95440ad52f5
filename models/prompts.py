"""Prompt templates (data in `models/prompts.json`)."""

from __future__ import annotations

import json
from pathlib import Path

PROMPTS_PATH = Path(__file__).with_name("prompts.json")


def get_templates(name: str = "ensemble") -> list[str]:
    """Return the templates of one named set ('paper' or 'ensemble')."""
    sets = json.loads(PROMPTS_PATH.read_text())["templates"]
    if name not in sets:
        raise ValueError(f"unknown template set {name!r}; expected one of {sorted(sets)}")
    return list(sets[name])


def build_prompts(class_names: list[str] | tuple[str, ...], templates: list[str]) -> list[list[str]]:
    """Prompts per class: result[c][t] = templates[t] with class c's name."""
    return [[template.format(name) for template in templates] for name in class_names]
