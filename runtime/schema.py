"""The schema-1 contract shared by every wire message: versions, limits, unpacking, field checks.

The JSON Schema documents (schemas/frame_v1.json, schemas/decision_v1.json) are read here, so
code and data cannot drift apart; frame headers (:mod:`trustvlm.runtime.frames`) and published
bodies (:mod:`trustvlm.runtime.messages`) are both checked with the helpers below.

Parsing is bounded: msgpack is unpacked with explicit limits (:data:`HEADER_UNPACK_LIMITS`,
:data:`BODY_UNPACK_LIMITS`: string, bytes, array and map lengths; ext types are refused), and JSON
nesting beyond Python's recursion limit is a :class:`MessageError`, not a crash. Nothing received
is ever unpickled.

Versioning: every message carries ``schema_version`` ("major.minor"). A receiver rejects another
major version (:class:`SchemaVersionError`); within its major version it accepts keys it does
not know only from a newer minor version, and rejects them otherwise (a typo is not a feature).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import msgpack

SCHEMA_DIR = Path(__file__).resolve().parents[1] / "schemas"
FRAME_SCHEMA = json.loads((SCHEMA_DIR / "frame_v1.json").read_text())
DECISION_SCHEMA = json.loads((SCHEMA_DIR / "decision_v1.json").read_text())
#: Versions this code writes; read from the schema documents so code and data cannot drift apart.
FRAME_SCHEMA_VERSION: str = FRAME_SCHEMA["version"]
DECISION_SCHEMA_VERSION: str = DECISION_SCHEMA["version"]
MAX_INT64 = 2**63 - 1
# "major.minor" as the schemas' pattern ^1\.[0-9]+$ writes it for major 1: no sign, no leading zero in the major.
_VERSION_PATTERN = re.compile(r"(0|[1-9][0-9]*)\.([0-9]+)", re.ASCII)


class MessageError(ValueError):
    """A message that does not follow its schema."""


class SchemaVersionError(MessageError):
    """A message of a schema major version this code does not read."""


@dataclass(frozen=True)
class UnpackLimits:
    """Most a msgpack message may hold, passed to ``msgpack.unpackb`` (its own defaults allow the whole buffer).

    Attributes:
        max_str_len: Longest string (bytes).
        max_bin_len: Longest bytes value.
        max_array_len: Most items in one array.
        max_map_len: Most keys in one map.
    """

    max_str_len: int
    max_bin_len: int
    max_array_len: int
    max_map_len: int


#: Frame headers: a handful of short fields (a newer minor version may add a few).
HEADER_UNPACK_LIMITS = UnpackLimits(max_str_len=1024, max_bin_len=1024, max_array_len=16, max_map_len=32)
#: Published bodies: decision and health messages (health counters are one map of about 50 keys).
BODY_UNPACK_LIMITS = UnpackLimits(max_str_len=1 << 16, max_bin_len=1 << 16, max_array_len=1024, max_map_len=1024)


def _refuse_ext(code: int, data: bytes):
    raise ValueError(f"msgpack ext type {code} is not accepted ({len(data)} bytes)")


def unpack_message(data: bytes, limits: UnpackLimits, what: str):
    """Decode msgpack, or JSON when `data` starts with ``{``, within `limits`; never unpickles.

    Raises:
        MessageError: Malformed data, a limit exceeded, an ext type, non-UTF-8 text, or JSON
            nested deeper than the interpreter's recursion limit.
    """
    try:
        if data[:1] == b"{":
            return json.loads(data)
        return msgpack.unpackb(data, raw=False, strict_map_key=True, ext_hook=_refuse_ext,
                               max_str_len=limits.max_str_len, max_bin_len=limits.max_bin_len,
                               max_array_len=limits.max_array_len, max_map_len=limits.max_map_len, max_ext_len=0)
    except RecursionError:
        raise MessageError(f"{what}: nested too deeply") from None
    except (ValueError, TypeError, msgpack.UnpackException) as error:
        raise MessageError(f"{what} is neither msgpack nor JSON within limits: {error}") from error


def check_schema_version(value, ours: str, unknown_keys: set, known_keys: set, what: str) -> None:
    """Accept `value` if it has our major version, and unknown keys only from a newer minor.

    Raises:
        SchemaVersionError: Another major version.
        MessageError: A malformed version, or unknown keys at our minor version or older.
    """
    match = _VERSION_PATTERN.fullmatch(value) if isinstance(value, str) and len(value) <= 16 else None
    if match is None:
        raise MessageError(f"{what}: schema_version should be a 'major.minor' string like {ours!r}, but got {value!r}")
    major, minor = int(match.group(1)), int(match.group(2))
    our_major, our_minor = (int(part) for part in ours.split("."))
    if major != our_major:
        raise SchemaVersionError(f"{what}: schema_version {value} is not supported; this service reads "
                                 f"{our_major}.x (newest {ours})")
    if unknown_keys and minor <= our_minor:
        raise MessageError(f"{what}: unknown keys {sorted(unknown_keys)} in schema {value}; "
                           f"expected only {sorted(known_keys)}")


def int_field(data: dict, key: str, what: str, minimum: int = 0, maximum: int = MAX_INT64) -> int:
    """`data[key]` if it is an integer in [minimum, maximum] (not a bool), else MessageError."""
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise MessageError(f"{what}: {key} should be an integer in [{minimum}, {maximum}], but got {value!r}")
    return value


def enum_field(data: dict, key: str, enum: type[Enum], what: str):
    """`data[key]` as a member of `enum`, else MessageError listing the values."""
    value = data.get(key)
    try:
        return enum(value)
    except ValueError:
        raise MessageError(f"{what}: {key} should be one of {[e.value for e in enum]}, but got {value!r}") from None
