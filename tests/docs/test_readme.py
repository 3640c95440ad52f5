"""README.md is a front page, and what it held before the site is on a page of the site.

:data:`MOVED` is the map from every section of the long README (its ``##``/``###`` headings, and the
bold-titled parts that became headings) to the page, and the heading on that page, that holds it now.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()

#: The two commands a new user types first: the README's first lines, exactly.
FIRST_LINES = """# trustvlm-edge

```bash
make demo   # set up, export the embedded demo VLM, calibrate three degraded cameras, stream them through one service
make test   # run the test suite (installs what it needs, including Debian's Fashion-MNIST and OpenCV samples)
```
"""

#: Old README section -> (page under docs/, a heading on that page).
MOVED = {
    "The embedded demo model": ("get-started/demo-model.md", "The embedded demo model"),
    "What `make demo` does": ("get-started/demo.md", "The demo, line by line"),
    "Five-minute tour for a robotics engineer": ("get-started/tour.md", "Five-minute tour for a robotics engineer"),
    "Exporting a model": ("how-to/export.md", "Export a model"),
    "Calibration and the trust score": ("how-to/calibrate.md", "What `calibrate` does"),
    "Calibration: the fused trust head": ("concepts/trust-score.md", "The trust head"),
    "Calibration: The paper's auxiliary encoder": ("concepts/paper.md", "The paper's auxiliary encoder"),
    "Calibration: Beyond the paper: `lambda=auto`": ("concepts/trust-score.md", "Beyond the paper: `lambda=auto`"),
    "Calibration: The default score: `--score auto`": ("concepts/fused-score.md", "The fused score and `--score auto`"),
    "Calibration: Three coverage numbers": ("concepts/risk-guarantee.md", "Three coverage numbers"),
    "Calibration: the coverage table": ("concepts/risk-guarantee.md", "Measured coverage"),
    "Calibration: Frames the model has never seen": ("concepts/ood-gate.md", "The out-of-distribution gate"),
    "Results on the demo model (measured here, `make eval`)":
        ("concepts/trust-score.md", "Results on the demo model (measured here, `make eval`)"),
    "Your data": ("how-to/your-data.md", "Your own data and model"),
    "1. A model that knows your class names": ("how-to/your-data.md", "1. A model that knows your class names"),
    "2. Calibrate and evaluate": ("how-to/your-data.md", "2. Calibrate and evaluate"),
    "Your data: The paper's per-dataset settings": ("concepts/paper.md", "The paper's per-dataset settings"),
    "Your data: Image prototypes: two recipes": ("concepts/paper.md", "Image prototypes: two recipes"),
    "Your data: DINOv2 preprocessing differs": ("concepts/paper.md", "DINOv2 preprocessing differs from the official code's"),
    "Results on a folder dataset that is not Fashion-MNIST":
        ("how-to/your-data.md", "Results on a folder dataset that is not Fashion-MNIST"),
    "Train a small model on your folder": ("how-to/train.md", "Train a small model on your folder"),
    "Streaming service: `trustvlm serve`": ("how-to/serve.md", "Serve"),
    "Many cameras, each scored against its own calibration (`--bundles`)":
        ("concepts/bundles.md", "Many cameras, each scored against its own calibration (`--bundles`)"),
    "Frames in (`schemas/frame_v1.json`)": ("how-to/wire-a-robot.md", "Frames in (`schemas/frame_v1.json`)"),
    "Decisions out (`schemas/decision_v1.json`)": ("how-to/wire-a-robot.md", "Decisions out (`schemas/decision_v1.json`)"),
    "ROS 2 mapping (`vision_msgs/msg/Classification`)":
        ("how-to/wire-a-robot.md", "ROS 2 mapping (`vision_msgs/msg/Classification`)"),
    "ROS 2 mapping: measured through the real service": ("how-to/serve.md", "Measured through the real service"),
    "The frame path: decode workers, reduced decode, floods, same-device cameras":
        ("how-to/frame-path.md", "Tune the frame path: decode workers, reduced decode, floods, same-device cameras"),
    "Prometheus and Grafana": ("how-to/operate.md", "Prometheus and Grafana"),
    "Cluster mode: scoring on a Ray cluster (`serve --cluster`)":
        ("how-to/cluster.md", "Scale out on Ray: cluster mode (`serve --cluster`)"),
    "Speed": ("benchmarks.md", "How these figures are made"),
    "Reliability and security": ("how-to/operate.md", "Reload, stop, keys"),
    "Layout": ("code/layout.md", "Layout"),
    "Install on a CPU, an x86 GPU or a Jetson": ("get-started/install.md", "Install on a CPU, an x86 GPU or a Jetson"),
    "Tests": ("code/tests.md", "Tests"),
}


def test_the_readme_is_a_front_page():
    assert README.startswith(FIRST_LINES), "make demo and make test stay the README's first lines, exactly"
    assert len(README.splitlines()) <= 200
    headings = re.findall(r"^## (.+)$", README, re.M)
    assert headings[:2] == ["The demo", "Five-minute tour"] and {"Status", "Documentation"} <= set(headings), headings
    assert "never run on a GPU" in README and "measured" in README, "the status table keeps its honesty statements"


def test_every_relative_link_of_the_readme_resolves_and_points_into_the_site():
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", README)
    relative = [link for link in links if not re.match(r"^[a-z]+://", link)]
    assert not [link for link in relative if not (REPO / link).exists()], "README links to missing files"
    pages = {link for link in relative if link.startswith("docs/") and link.endswith(".md")}
    moved_to = {f"docs/{page}" for page, _ in MOVED.values()} - {"docs/benchmarks.md"}  # linked as BENCHMARKS.md
    assert moved_to <= pages, f"README does not link {sorted(moved_to - pages)}"
    assert "docs/assets/risk_coverage.png" in relative, "the demo's picture"


@pytest.mark.parametrize("old", sorted(MOVED))
def test_every_section_of_the_old_readme_has_a_page(old):
    page, heading = MOVED[old]
    path = REPO / "docs" / page
    assert path.exists(), f"README section {old!r} should be on docs/{page}"
    headings = {re.sub(r"\s*\{[^}]*\}$", "", line.lstrip("#").strip())
                for line in path.read_text().splitlines() if line.startswith("#")}
    assert heading in headings, f"docs/{page} has no heading {heading!r}: {sorted(headings)}"


def test_every_page_of_the_site_is_linked_from_the_readme_or_the_home_page():
    home = (REPO / "docs" / "index.md").read_text()
    linked = {link.removeprefix("docs/") for link in re.findall(r"\]\(([^)#\s]+\.md)", README)}
    linked |= set(re.findall(r"\]\(([^)#\s]+\.md)", home))
    pages = {str(path.relative_to(REPO / "docs")) for path in (REPO / "docs").rglob("*.md")} - {"index.md"}
    generated = {"reference/cli.md", "reference/config.md", "reference/schemas.md", "reference/metrics.md",
                 "reference/api/contract.md", "reference/api/scoring.md"}
    assert generated <= linked, sorted(generated - linked)
    assert not pages - linked, f"pages no one links to: {sorted(pages - linked)}"
