"""The documentation site: it builds strictly, its Reference is complete, and it works offline.

The Reference pages are generated at build time by docs/hooks/reference.py; these tests read the
lists they must cover from the code itself (the argparse parsers, the service's metrics registry,
the serve config dataclasses, the wire schemas), not from the generator, and look for each in the
built HTML.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import re
import typing
from pathlib import Path

from trustvlm.cli import build_parser

REPO = Path(__file__).resolve().parents[2]


def text_of(page_html: str) -> str:
    """The visible text of an HTML page (tags dropped, entities decoded)."""
    return html.unescape(re.sub(r"<[^>]+>", " ", page_html))


def test_make_docs_builds_the_site_strictly(site):
    assert site.command[-4:-1] == ["build", "--strict", "--site-dir"], site.command
    assert "WARNING" not in site.output, site.output
    for page in ("index.md", "get-started/demo.md", "concepts/guarantee-monitor.md", "how-to/recalibrate.md",
                 "reference/cli.md", "benchmarks.md", "reliability.md"):
        assert "<h1" in site.page(page), page
    print(f"make docs: built in {site.seconds:.1f} s")


def subcommand_parsers(parser: argparse.ArgumentParser, words=("trustvlm",)):
    """``(words, parser)`` of every subcommand, nested ones too; `trustvlm bench` is the benchmark suite's parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                if name == "bench":
                    from trustvlm.benchmarks.suite import build_parser as suite_parser  # noqa: PLC0415

                    subparser = suite_parser()
                yield (*words, name), subparser
                yield from subcommand_parsers(subparser, (*words, name))


def test_every_subcommand_and_every_option_is_in_the_command_line_reference(site):
    page = site.page("reference/cli.md")
    commands = list(subcommand_parsers(build_parser()))
    assert len(commands) >= 14, [" ".join(words) for words, _ in commands]
    sections = {match.group(1): text_of(chunk) for chunk in re.split(r"(?=<h2 )", page)
                if (match := re.match(r'<h2 id="([^"]+)"', chunk))}
    missing = []
    for words, parser in commands:
        shown = sections.get("-".join(words))
        if shown is None:
            missing.append(" ".join(words))
            continue
        missing += [f"{' '.join(words)} {option}" for action in parser._actions for option in action.option_strings
                    if action.help != argparse.SUPPRESS and option not in shown]
    assert not missing, f"not in the command line reference: {missing}"


def test_every_metric_of_the_service_registry_is_in_the_metrics_reference(site):
    from trustvlm.runtime.metrics import PrometheusObserver  # noqa: PLC0415
    from trustvlm.runtime.monitor.prometheus import WatchCollector  # noqa: PLC0415

    shown = text_of(site.page("reference/metrics.md"))
    families = [metric for metric in PrometheusObserver().registry.collect()] + WatchCollector().describe()
    assert len(families) >= 20, [family.name for family in families]
    missing = [family.name for family in families
               if not re.search(rf"\b{family.name}{'_total' if family.type == 'counter' else ''}\b", shown)]
    assert not missing, f"metrics the service exports but the reference lacks: {missing}"


def config_keys(cls, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    keys = []
    for field in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[field.name]):
            keys += config_keys(hints[field.name], f"{prefix}{field.name}.")
        else:
            keys.append(f"{prefix}{field.name}")
    return keys


def test_every_serve_config_key_and_every_schema_field_is_in_the_reference(site):
    from trustvlm.runtime.config import ServiceConfig  # noqa: PLC0415

    config = text_of(site.page("reference/config.md"))
    assert not [key for key in config_keys(ServiceConfig) if key not in config]
    schemas = text_of(site.page("reference/schemas.md"))
    for path in sorted((REPO / "schemas").glob("*.json")):
        schema = json.loads(path.read_text())
        objects = [schema, *schema.get("$defs", {}).values()]
        fields = {name for spec in objects for name in spec.get("properties", {})}
        assert fields and not [name for name in fields if name not in schemas], path.name


def test_the_api_reference_renders_the_contract_and_the_scores_from_their_docstrings(site):
    contract = site.page("reference/api/contract.md")
    modules = sorted(path.stem for path in (REPO / "contract").glob("*.py") if path.stem != "__init__")
    assert not [name for name in modules if f'id="trustvlm.contract.{name}"' not in contract]
    assert 'id="trustvlm.calibration.scores.compute_scores"' in site.page("reference/api/scoring.md")


#: An attribute that makes a browser fetch something: a script, a stylesheet or font (link), an image, a frame.
FETCHING = re.compile(r'<(script|link|img|iframe|source)\b[^>]*\b(?:src|href)="([^"]+)"', re.I)


def test_the_built_site_loads_nothing_from_other_hosts(site):
    """No script, stylesheet, font or image from another host: the site works offline.

    Material's bundled JavaScript can load a script from a CDN in three cases only: a Mermaid diagram
    on the page, a ``repo_url`` (GitHub's API for the star count), and a browser without
    ResizeObserver (a polyfill). The first two are checked to be absent; every browser of the last
    years has ResizeObserver.
    """
    external, pages = [], 0
    for path in site.root.rglob("*.html"):
        pages += 1
        page = path.read_text()
        external += [f"{path.relative_to(site.root)}: <{tag} {url}>" for tag, url in FETCHING.findall(page)
                     if re.match(r"^(https?:)?//", url)]
        assert 'class="mermaid"' not in page, path
    for path in site.root.rglob("*.css"):
        external += [f"{path.relative_to(site.root)}: {url}" for url in
                     re.findall(r"""(?:url\(|@import\s+)["']?((?:https?:)?//[^"')\s]+)""", path.read_text())]
    assert pages > 20 and not external, external
    config = (REPO / "mkdocs.yml").read_text()
    assert re.search(r"^\s+font: false$", config, re.M) and "repo_url" not in config and "extra_javascript" not in config
    assert re.search(r"^\s+- search$", config, re.M), "the built-in search plugin"


def test_benchmarks_and_reliability_are_included_from_the_root_files_not_copied(site):
    for doc, page in (("BENCHMARKS.md", "benchmarks.md"), ("RELIABILITY.md", "reliability.md")):
        source = (REPO / "docs" / page).read_text()
        assert f'--8<-- "{doc}"' in source
        root_text = (REPO / doc).read_text()
        headings = re.findall(r"^## (.+)$", root_text, re.M)
        assert not [heading for heading in headings if f"## {heading}" in source], f"docs/{page} copies {doc}"
        shown = text_of(site.page(page))
        for heading in headings:
            plain = re.sub(r"[`*]", "", heading)
            assert plain in shown, f"{doc}: {heading!r} is not on the {page} page"
