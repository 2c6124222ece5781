"""Configuration problems as ONE line ``FILE:LINE: key.path: what is wrong (did you mean ...?)``.

The one owner of what the sweep spec (``orchestrator.spec``), the trial YAML (``trainers.config``)
and the preflight (``orchestrator.preflight``) share when they speak to the user:

- :func:`read_yaml_mapping` — a YAML file read as a mapping; not text, not UTF-8, not YAML, or not
  a mapping is a :class:`ConfigError` naming the file and line;
- :func:`yaml_key_lines` / :class:`YamlSource` — the line of every dotted key path (``grid.seed``)
  and list item (``grid.seed.1``), and the line of a path's closest enclosing key;
- :func:`model_at` — the pydantic model a key path leads to (for "unknown key, did you mean");
- :func:`explain_error` — a pydantic error as (key path, message), with the ``"@sub:"`` convention
  by which a validator names the offending sub-key;
- :func:`unknown_message` / :func:`literal_message` — "unknown X (did you mean ...?)".

yaml and pydantic only: the analysis and the orchestrator import this without torch.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

__all__ = ["ConfigError", "YamlSource", "explain_error", "literal_message", "model_at", "read_yaml_mapping",
           "unknown_message", "yaml_key_lines"]


class ConfigError(ValueError):
    """A configuration problem, phrased as one line for the user."""


# --- reading -------------------------------------------------------------------------------------

def read_yaml_mapping(path: Path, what: str) -> tuple[dict, str]:
    """(parsed mapping, text) of a YAML file; ConfigError naming the file (and line) otherwise."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    nul = raw.find(b"\x00")
    if nul >= 0:
        line = raw[:nul].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not a text file (a NUL byte at offset {nul}); expected YAML")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                          f"save the YAML as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        if isinstance(e, yaml.reader.ReaderError):  # a control character
            line = f":{text[:e.position].count(chr(10)) + 1}"  # ReaderError has no problem_mark
            raise ConfigError(f"{path}{line}: not valid YAML text (control character #x{e.character:02x} "
                              f"at offset {e.position})") from None
        why = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"{path}{line}: not valid YAML ({why})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of {what} at the top level")
    return data, text


# --- where in the file ----------------------------------------------------------------------------

def yaml_key_lines(text: str) -> dict[str, int]:
    """1-based line of every dotted key path (``base.method.lam``) and list item (``grid.seed.1``,
    keys inside items too: ``analysis.primary.0.metric``) of a YAML document; {} if it does not parse.
    A key written twice maps to its last occurrence, whose value ``yaml.safe_load`` keeps."""
    out: dict[str, int] = {}

    def walk(node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                out[f"{prefix}{key_node.value}"] = key_node.start_mark.line + 1
                walk(value_node, f"{prefix}{key_node.value}.")
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                out[f"{prefix}{i}"] = item.start_mark.line + 1
                walk(item, f"{prefix}{i}.")

    try:
        walk(yaml.compose(text), "")
    except yaml.YAMLError:
        pass
    return out


class YamlSource:
    """The YAML file's name and the line of every key path (``grid.seed``) and list item (``grid.seed.1``)."""

    def __init__(self, path: str | Path, text: str):
        self.path = str(path)
        self.text = text
        self.lines = yaml_key_lines(text)

    def line(self, path: str) -> int | None:
        """Line of ``path`` or of its closest enclosing key (``grid.method.cost`` for a flattened key
        written nested is found under the same dotted path)."""
        parts = path.split(".")
        while parts:
            found = self.lines.get(".".join(parts))
            if found is not None:
                return found
            parts.pop()
        return None

    def error(self, path: str, message: str) -> ConfigError:
        line = self.line(path) if path else None
        where = f"{self.path}:{line}" if line else self.path
        return ConfigError(f"{where}: {path}: {message}" if path else f"{where}: {message}")


# --- what is wrong --------------------------------------------------------------------------------

def model_at(model: type[BaseModel] | None, loc) -> type[BaseModel] | None:
    """The pydantic model that the key path ``loc`` leads to from ``model`` (through optional fields),
    or None where it leaves the models (a value, a free-form mapping, an unknown key)."""
    for part in loc:
        field = model.model_fields.get(str(part)) if model is not None else None
        if field is None:
            return None
        ann = field.annotation
        candidates = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = candidates[0] if candidates else None
    return model


def explain_error(error: dict, model: type[BaseModel], show_key: bool = False) -> tuple[list[str], str]:
    """(key path, message) of one pydantic error of ``model``: validator wrappers left out of the path,
    a ``"@sub:"`` message prefix (a validator that knows the offending sub-key) moved into it, and an
    unknown key answered with the model's fields (``show_key``: repeat the key in the message)."""
    loc = [str(p) for p in error["loc"] if not str(p).startswith("function-")]
    msg = error["msg"].removeprefix("Value error, ")
    if msg.startswith("@"):
        sub, msg = msg[1:].split(":", 1)
        loc.append(sub)
    if error["type"] == "extra_forbidden":
        parent = model_at(model, loc[:-1])
        msg = unknown_message(loc[-1], list(parent.model_fields) if parent else [], what="key", show_value=show_key)
    return loc, msg


def unknown_message(value: Any, choices, what: str = "key", show_value: bool | None = None) -> str:
    """``unknown WHAT 'value' (did you mean "close"?)`` or ``(choose from ...)``; the value is left out
    for a key unless ``show_value`` (the key path already names it)."""
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    hint = f' (did you mean "{close[0]}"?)' if close else (
        f" (choose from {', '.join(map(str, choices))})" if choices else "")
    if show_value is None:
        show_value = what != "key"
    return f"unknown {what} {value!r}{hint}" if show_value else f"unknown {what}{hint}"


def literal_message(error: dict) -> str:
    """A pydantic ``literal_error`` as "unknown value 'x' (did you mean ...?)"."""
    expected = re.findall(r"'([^']*)'", str((error.get("ctx") or {}).get("expected", "")))
    return unknown_message(error.get("input"), expected, what="value")
