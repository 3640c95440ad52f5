"""Every registry entry, as a new user would try it: `trustvlm export --model NAME --weights random`.

Each entry either exports (random-init weights, a small parity set, every gate passed) or is
refused in one line; none ends in a traceback. Offline: the Hugging Face cache is an empty folder
and the hub is off, so a model whose tokenizer is a Hugging Face one (SigLIP) runs its text
parity gate on ids within its vocabulary. Every entry but the small demo model is marked heavy
(ViT-B exports take about a minute on two cores, ViT-L two): `make test` leaves them out, `make test-heavy`
walks them all. The entries whose export `make test` checks elsewhere: clip_vitb32
(tests/export/test_export_random_vitb32.py), siglip_vitb16 (tests/export/test_export_siglip.py), dinov2
(tests/export/test_export_dinov2.py).
"""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import require_fashion_mnist
from trustvlm.models.registry import REGISTRY_PATH
from trustvlm.contract.manifest import read_manifest

ENTRIES = sorted(json.loads(REGISTRY_PATH.read_text())["models"])
FAST = {"demo_fmnist"}
#: Entries that are expected to be refused (one line) rather than exported with random weights.
EXPECTED_REFUSALS: dict[str, str] = {}
PARITY_IMAGES = 4


def export_random(name, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    return subprocess.run([sys.executable, "-m", "trustvlm", "export", "--model", name, "--weights", "random",
                           "--output", str(tmp_path / "artifacts"), "--parity-images", str(PARITY_IMAGES)],
                          capture_output=True, text=True, timeout=1800, env=env)


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in FAST else (pytest.mark.slow, pytest.mark.heavy)) for n in ENTRIES])
def test_entry_exports_random_init_or_is_refused_in_one_line(name, tmp_path):
    require_fashion_mnist()
    result = export_random(name, tmp_path)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    if name in EXPECTED_REFUSALS:
        errors = [line for line in result.stderr.splitlines() if "error:" in line]
        assert result.returncode != 0 and len(errors) == 1, result.stderr[-2000:]
        assert EXPECTED_REFUSALS[name] in errors[0]
        assert not (tmp_path / "artifacts" / name).exists()
        return
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"exported {name} [random-init weights" in result.stdout
    manifest = read_manifest(tmp_path / "artifacts" / name)
    assert manifest["weights"]["random_init"] and manifest["model"] == name
    parity = manifest["precisions"]["fp32"]["parity"]
    assert parity["image_min_cosine"] >= 0.9999 and parity["images"] == PARITY_IMAGES
    if "text_input" in manifest:
        assert parity["text_min_cosine"] >= 0.9999 and parity["prompts"] > 0
        assert manifest["logit_scale"] > 0
    print(f"{name}: exported in {sum(manifest['export_seconds'].values()):.1f} s, image cosine min "
          f"{parity['image_min_cosine']:.7f}, text cosine min {parity['text_min_cosine']}, "
          f"parity tokens {manifest.get('text_input', {}).get('parity_tokens')}")
