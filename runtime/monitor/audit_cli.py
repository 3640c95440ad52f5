"""`trustvlm audit`: send audit labels (or an operator's reset) to a running service's feedback socket."""

from __future__ import annotations

import argparse
import csv
import math
import os
from collections import Counter
from pathlib import Path

from trustvlm.runtime.monitor.feedback import MAX_ITEMS, encode_request
from trustvlm.runtime.schema import MAX_INT64

__all__ = ["add_audit_parser", "read_label_csv", "read_review_folder", "run_audit"]

EPILOG = """examples:
  trustvlm audit --feedback tcp://127.0.0.1:5557 --labels labels.csv   # columns camera_id,seq,label
  trustvlm audit --feedback tcp://127.0.0.1:5557 --folder recorded/     # a reviewed recording: <camera>/to_review/<label>/
  trustvlm audit --feedback tcp://127.0.0.1:5557 --reset cam1 --operator alice

Only frames the service marked audit: true count; the service answers how many labels matched one.
"""


class AuditInputError(ValueError):
    """Labels that cannot be read (one line for the user)."""


def _seq(text: str) -> int | None:
    """`text` as a frame's seq (ASCII digits, at most a 64-bit integer), else None."""
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 19 or int(text) > MAX_INT64:
        return None
    return int(text)


def _timeout(text: str) -> float:
    """``--timeout-s``: a finite number of seconds above 0 (else one argparse error line)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def read_label_csv(path: Path) -> list[dict]:
    """Rows ``{camera_id, seq, label}`` of a CSV with those three columns (a header row names them)."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"camera_id", "seq", "label"} - set(reader.fieldnames or ())
            if missing:
                raise AuditInputError(f"{path}: the header should name camera_id, seq and label, but it lacks "
                                      f"{sorted(missing)}")
            rows = []
            for line, row in enumerate(reader, start=2):
                seq = _seq(row["seq"] or "")
                if seq is None or not row["camera_id"] or not row["label"]:
                    raise AuditInputError(f"{path}:{line}: expected a camera id, a seq (an integer >= 0) and a label, "
                                          f"but got {row['camera_id']!r}, {row['seq']!r}, {row['label']!r}")
                rows.append({"camera_id": row["camera_id"].strip(), "seq": seq, "label": row["label"].strip()})
    except OSError as error:
        raise AuditInputError(f"{path}: cannot be read ({error.strerror or error})") from None
    except UnicodeDecodeError:
        raise AuditInputError(f"{path}: is not UTF-8 text") from None
    return rows


def read_review_folder(root: Path) -> list[dict]:
    """Labels of a reviewed recording: ``<camera>/to_review/<label>/<camera>_<seq>_<capture ns>.<ext>``.

    The folder a person left each image in is its label; folders whose name starts with ``_`` (``_unscored``)
    hold frames nobody labelled and are skipped.
    """
    if not root.is_dir():
        raise AuditInputError(f"{root}: is not a folder")
    rows = []
    for camera_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        review = camera_dir / "to_review"
        for label_dir in sorted(p for p in review.glob("*") if p.is_dir() and not p.name.startswith("_")):
            for image in sorted(p for p in label_dir.iterdir() if p.is_file() and not p.name.startswith(".")):
                parts = image.stem.rsplit("_", 2)
                if len(parts) != 3 or _seq(parts[1]) is None:
                    raise AuditInputError(f"{image}: expected a recorded frame named <camera>_<seq>_<capture ns>")
                rows.append({"camera_id": parts[0], "seq": _seq(parts[1]), "label": label_dir.name})
    if not rows:
        raise AuditInputError(f"{root}: holds no reviewed frames (<camera>/to_review/<label>/<file>)")
    return rows


def _request(socket, body: bytes, timeout_ms: int, address: str) -> dict:
    import msgpack  # noqa: PLC0415
    import zmq  # noqa: PLC0415

    socket.send(body)
    if not socket.poll(timeout_ms, zmq.POLLIN):
        raise AuditInputError(f"no answer from {address} within {timeout_ms / 1000:g} s: is `trustvlm serve --feedback "
                              f"{address}` running?")
    return msgpack.unpackb(socket.recv(), raw=False)


def run_audit(args: argparse.Namespace) -> int:
    """Handler of `trustvlm audit`."""
    import zmq  # noqa: PLC0415

    from trustvlm.cli_common import CliError  # noqa: PLC0415

    try:
        if args.reset is None:
            rows = read_label_csv(args.labels) if args.labels is not None else read_review_folder(args.folder)
        context = zmq.Context.instance()
        socket = context.socket(zmq.REQ)
        socket.setsockopt(zmq.LINGER, 0)
        try:
            socket.connect(args.feedback)
        except zmq.ZMQError as error:
            socket.close()
            raise AuditInputError(f"--feedback {args.feedback!r} is no ZeroMQ address ({error}); e.g. "
                                  "tcp://127.0.0.1:5557") from None
        try:
            timeout_ms = int(args.timeout_s * 1000)
            if args.reset is not None:
                answer = _request(socket, encode_request("reset", camera_id=args.reset, operator=args.operator),
                                  timeout_ms, args.feedback)
                if answer.get("kind") == "error":
                    raise AuditInputError(f"the service refused the reset: {answer.get('error')}")
                print(f"camera {args.reset}: " + ("monitor and audit reset" if answer.get("done") else
                                                  "not watched by the service (nothing to reset)"))
                return 0 if answer.get("done") else 1
            outcomes: Counter = Counter()
            for start in range(0, len(rows), MAX_ITEMS):
                answer = _request(socket, encode_request("labels", items=rows[start:start + MAX_ITEMS]), timeout_ms,
                                  args.feedback)
                if answer.get("kind") == "error":
                    raise AuditInputError(f"the service refused the labels: {answer.get('error')}")
                outcomes.update(answer.get("outcomes", {}))
        finally:
            socket.close()
    except AuditInputError as error:
        raise CliError(str(error)) from None
    parts = ", ".join(f"{name} {outcomes[name]}" for name in ("matched", "unmatched", "unknown_label",
                                                             "unwatched_camera") if outcomes[name])
    print(f"sent {len(rows)} labels to {args.feedback}: {parts} (only frames marked audit: true match; "
          "unmatched ones were not drawn for audit, already labelled or forgotten)")
    return 0


def add_audit_parser(subparsers) -> None:
    """Add `audit` to a subparsers object."""
    parser = subparsers.add_parser(
        "audit", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        help="send audit labels (or an operator's reset of a camera) to a running service's feedback socket",
        description="The service marks a random share of accepted frames audit: true; the true labels of those "
                    "frames test, anytime-valid, whether the risk among accepted frames is still at most the "
                    "bundle's alpha (unverified / verified / violated). Send them from a CSV or a reviewed "
                    "recording, or reset a camera whose guarantee was found lost.")
    parser.add_argument("--feedback", required=True, metavar="ADDRESS",
                        help="the service's feedback socket (serve --feedback), e.g. tcp://127.0.0.1:5557")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--labels", type=Path, metavar="CSV", help="a CSV with columns camera_id, seq, label")
    what.add_argument("--folder", type=Path, metavar="DIR",
                      help="a reviewed recording (serve --record DIR): DIR/<camera>/to_review/<label>/<frame file>")
    what.add_argument("--reset", metavar="CAMERA", help="clear the camera's monitor and audit (logged by the service)")
    parser.add_argument("--operator", default=os.environ.get("USER") or "operator",
                        help="who resets (logged; default: the login name)")
    parser.add_argument("--timeout-s", type=_timeout, default=5.0, help="how long to wait for each answer")
    parser.set_defaults(handler=run_audit)
