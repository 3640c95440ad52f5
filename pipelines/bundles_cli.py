"""`trustvlm bundles swap|rollback|list`: a thin argparse layer over :mod:`trustvlm.pipelines.bundle_swap`.

Give one camera of a camera map (``serve --bundles cameras.toml``) a recalibrated bundle, verified before the map
changes, keep what it had for rollback, and list what scores which camera.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from trustvlm.cli_common import HELP_POSITION, CliError, wrap

EPILOG = """examples:
  # cam1 was recalibrated on its own frames into bundles/cam1-2025-06: check it, then route cam1 (only) to it
  trustvlm bundles swap --map cameras.toml --camera cam1 --bundle bundles/cam1-2025-06 \\
      --artifacts artifacts/demo_fmnist
  trustvlm bundles list --map cameras.toml --artifacts artifacts/demo_fmnist   # what scores which camera
  trustvlm bundles rollback --map cameras.toml --camera cam1                     # undo cam1's last swap
  trustvlm bundles swap --map new.toml --camera front --bundle bundles/front --artifacts artifacts/demo_fmnist
      # no new.toml yet: it is created with only front's entry

A running `trustvlm serve --bundles cameras.toml` picks a change up on its own (it watches the map) or on
`kill -HUP <pid>`; a camera whose bundle id changes has its guarantee monitor start afresh. Each swap is recorded in
cameras.toml.history.json beside the map (per camera a stack: rollback goes back one swap at a time).
"""

def _formatter(prog: str) -> argparse.HelpFormatter:
    """Description and examples kept as written, flags aligned (no defaults shown: none worth showing)."""
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=HELP_POSITION)


_MAP_HELP = "the camera map (TOML or JSON) that `trustvlm serve --bundles` reads"
_AUX_HELP = ("export folder of the auxiliary image encoder, for a bundle calibrated with --prototype-encoder "
             "(e.g. artifacts/dinov2_vitb14)")


def add_bundles_parser(subparsers) -> None:
    """Add `bundles` (with swap, rollback and list) to a subparsers object."""
    parser = subparsers.add_parser(
        "bundles", formatter_class=_formatter, epilog=EPILOG,
        help="swap one camera's bundle in a camera map (verified first), roll it back, or list the map's bundles",
        description=wrap("Manage which bundle scores which camera in a camera map (`trustvlm serve --bundles "
                         "cameras.toml`): swap in a camera's recalibrated bundle after checking it against the "
                         "export the service runs, roll a camera back to what it had, or list every entry."))
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True, title="actions")

    swap = actions.add_parser(
        "swap", formatter_class=_formatter, epilog=EPILOG,
        help="verify a new bundle and route one camera to it (old routing kept for rollback)",
        description=wrap("Verify the --bundle folder against the export (file sha256s, encoders, weights), open it "
                         "and run its self-check the way the service will (CPU), then give the --camera its own "
                         "entry in the map, pointing to that folder, even if a pattern or the default routed it "
                         "before; other cameras are untouched. Refused in one line, with nothing changed, when any "
                         "check fails. A missing map is created with only this camera's entry."))
    swap.add_argument("--map", type=Path, required=True, metavar="FILE", help=_MAP_HELP)
    swap.add_argument("--camera", required=True, metavar="ID", help="the camera id (as its frames send it), e.g. cam1")
    swap.add_argument("--bundle", type=Path, required=True, metavar="DIR",
                      help="the new bundle folder (from `trustvlm calibrate`)")
    swap.add_argument("--artifacts", type=Path, required=True, metavar="DIR",
                      help="the export folder the service runs")
    swap.add_argument("--prototype-encoder", type=Path, metavar="DIR", help=_AUX_HELP)
    swap.set_defaults(handler=run_swap)

    rollback = actions.add_parser(
        "rollback", formatter_class=_formatter, epilog=EPILOG,
        help="route one camera back to what it had before its last swap",
        description=wrap("Undo the camera's last swap: give it back its previous entry, or remove the entry the swap "
                         "added (the camera then goes back to the pattern or default that routed it). Repeat to go "
                         "back further. With --artifacts, the bundle it goes back to is verified first."))
    rollback.add_argument("--map", type=Path, required=True, metavar="FILE", help=_MAP_HELP)
    rollback.add_argument("--camera", required=True, metavar="ID", help="the camera id, e.g. cam1")
    rollback.add_argument("--artifacts", type=Path, metavar="DIR",
                          help="verify the restored bundle against this export first")
    rollback.add_argument("--prototype-encoder", type=Path, metavar="DIR", help=_AUX_HELP)
    rollback.add_argument("--force", action="store_true",
                          help="roll back even when the camera's entry was edited by hand since the swap")
    rollback.set_defaults(handler=run_rollback)

    listing = actions.add_parser(
        "list", formatter_class=_formatter, epilog=EPILOG,
        help="one line per map entry: folder, bundle id, threshold, monitor reference, rollback depth",
        description=wrap("One line per entry of the map, the default last: route -> folder -> bundle id, score, "
                         "threshold, alpha, calibration coverage, whether the bundle carries a monitor reference "
                         "sample (without one its cameras' guarantees are not watched) and the camera's rollback "
                         "depth. With --artifacts, whether each bundle verifies against that export."))
    listing.add_argument("--map", type=Path, required=True, metavar="FILE", help=_MAP_HELP)
    listing.add_argument("--artifacts", type=Path, metavar="DIR", help="verify every bundle against this export folder")
    listing.add_argument("--prototype-encoder", type=Path, metavar="DIR", help=_AUX_HELP)
    listing.set_defaults(handler=run_list)


def _answer(call) -> list[str]:
    """The lines `call` returns; its SwapError as the command's one-line error."""
    from trustvlm.pipelines.bundle_swap import SwapError  # noqa: PLC0415 - keep --help light

    try:
        return call()
    except SwapError as error:
        raise CliError(str(error)) from error


def run_swap(args: argparse.Namespace) -> int:
    """Handler of `trustvlm bundles swap`: one line saying what changed."""
    from trustvlm.pipelines.bundle_swap import swap_bundle  # noqa: PLC0415

    print(*_answer(lambda: [describe_change(swap_bundle(args.map, args.camera, args.bundle, args.artifacts,
                                                        args.prototype_encoder))]), sep="\n")
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    """Handler of `trustvlm bundles rollback`: one line saying what the camera is back on."""
    from trustvlm.pipelines.bundle_swap import rollback_bundle  # noqa: PLC0415

    print(*_answer(lambda: [describe_change(rollback_bundle(args.map, args.camera, args.artifacts,
                                                            args.prototype_encoder, args.force))]), sep="\n")
    return 0


def run_list(args: argparse.Namespace) -> int:
    """Handler of `trustvlm bundles list`: one line per entry."""
    from trustvlm.pipelines.bundle_swap import list_bundles  # noqa: PLC0415

    print(*_answer(lambda: list_bundles(args.map, args.artifacts, args.prototype_encoder)), sep="\n")
    return 0


def describe_change(change) -> str:
    """One line for a :class:`~trustvlm.pipelines.bundle_swap.BundleChange`: what changed, the old and new bundle
    ids, how a running service takes it, and what happens to the camera's guarantee monitor."""
    record, camera = change.record, change.camera
    other = route_words(change.other_route, camera, change.other_folder, change.other_bundle_id)
    rolled_back = change.action == "rollback"
    new_id = change.other_bundle_id if rolled_back else record["bundle_id"]
    old_id = record["bundle_id"] if rolled_back else record["previous_bundle_id"]
    monitor = (f"the bundle id is unchanged, so {camera}'s guarantee monitor keeps its state" if new_id == old_id
               else f"{camera}'s guarantee monitor starts afresh on {'that' if rolled_back else 'the new'} bundle")
    service = (f"a running `trustvlm serve --bundles {change.map_path}` picks it up on its own (map watch) or on "
               f"SIGHUP, and {monitor}")
    if rolled_back:
        return (f"{camera}: back to {other}, from {record['bundle']} (bundle {record['bundle_id']}); wrote "
                f"{change.map_path} (rollback depth {change.depth} left); {service}")
    if record["created_map"]:
        return (f"{camera}: now {record['bundle']} (bundle {record['bundle_id']}); created {change.map_path} with "
                f"only {camera}'s entry (rollback depth {change.depth}); serve it with `trustvlm serve --artifacts "
                f"ART --bundles {change.map_path}`")
    made = f"wrote {change.map_path}"
    return (f"{camera}: now {record['bundle']} (bundle {record['bundle_id']}), was {other}; {made} (rollback depth "
            f"{change.depth}); {service}")


def route_words(route: str | None, camera: str, folder: str | None, bundle_id: str | None) -> str:
    """How a camera is routed, in words: by its own entry, a pattern, the default, or nothing."""
    if route is None:
        return "no bundle (its frames deferred no_bundle)"
    how = "its own entry" if route == camera else "the default" if route == "default" else f"pattern {route!r}"
    return f"{folder} by {how} (bundle {bundle_id or 'unreadable'})"
