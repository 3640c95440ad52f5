"""`trustvlm export --name`: a model trained on your own data gets its own folder, manifest name and reports."""

import json
import shutil

import pytest

from tests.conftest import require_fashion_mnist
from trustvlm.cli import main
from trustvlm.contract.manifest import model_name
from trustvlm.export.naming import ArtifactNameError, artifact_name
from trustvlm.models.compact_clip import CompactVocabCLIP, save_checkpoint
from trustvlm.models.registry import get_model_spec
from trustvlm.runtime.scoring.scorer import model_id_of

SPEC = get_model_spec("demo_fmnist")


@pytest.fixture(scope="module")
def trained_elsewhere(tmp_path_factory):
    """A train-demo checkpoint that is not the shipped one: demo architecture, 20 token ids, random weights."""
    path = tmp_path_factory.mktemp("weights") / "digits.pt"
    save_checkpoint(CompactVocabCLIP(json.loads(SPEC.local_config.read_text()), list(range(300, 320)) + [49407]),
                    path, {"class_names": ["zero", "one"]})
    return path


def run_cli(capsys, *args):
    """`trustvlm ARGS` in this process (torch is imported already): (exit status, stdout, stderr)."""
    status = main([str(arg) for arg in args])
    out, err = capsys.readouterr()
    return status, out, err


def test_default_names(trained_elsewhere, tmp_path):
    assert artifact_name(SPEC, None) == "demo_fmnist"
    assert artifact_name(SPEC, "random") == "demo_fmnist"
    assert artifact_name(SPEC, str(SPEC.embedded_checkpoint)) == "demo_fmnist"  # the shipped checkpoint itself
    assert artifact_name(SPEC, str(trained_elsewhere)) == "digits"  # another trained model: its file's name
    assert artifact_name(SPEC, str(trained_elsewhere), "robot-cell-3") == "robot-cell-3"
    not_compact = tmp_path / "ViT-B-32-openai.pt"
    not_compact.write_bytes(b"\x00" * 64)
    assert artifact_name(get_model_spec("clip_vitb32"), str(not_compact)) == "clip_vitb32"  # an entry's own weights
    impostor = tmp_path / "demo_fmnist.pt"
    shutil.copy(trained_elsewhere, impostor)
    with pytest.raises(ArtifactNameError, match="--name"):
        artifact_name(SPEC, str(impostor))
    with pytest.raises(ArtifactNameError, match="cannot name an artifacts folder"):
        artifact_name(SPEC, None, "../elsewhere")


def test_manifests_without_a_name_report_the_registry_model():
    assert model_name({"model": "demo_fmnist"}) == "demo_fmnist"
    assert model_name({"model": "demo_fmnist", "name": "digits"}) == "digits"


@pytest.mark.slow
def test_export_name_gives_the_folder_the_manifest_and_the_reports_the_name(trained_elsewhere, tmp_path, capsys):
    require_fashion_mnist()
    status, out, err = run_cli(capsys, "export", "--model", "demo_fmnist", "--weights", trained_elsewhere,
                               "--name", "digits-v1", "--output", tmp_path, "--parity-images", "16")
    assert status == 0, err
    assert "exported digits-v1 (demo_fmnist)" in out, out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits-v1"]
    manifest = json.loads((tmp_path / "digits-v1" / "manifest.json").read_text())
    assert (manifest["name"], manifest["model"]) == ("digits-v1", "demo_fmnist")
    assert model_id_of(manifest).startswith("digits-v1@sha256:")  # every decision and heartbeat of `serve`


def test_a_trained_file_named_like_a_registry_model_is_refused(trained_elsewhere, tmp_path, capsys):
    impostor = tmp_path / "weights" / "demo_fmnist.pt"
    impostor.parent.mkdir()
    shutil.copy(trained_elsewhere, impostor)
    status, _, err = run_cli(capsys, "export", "--model", "demo_fmnist", "--weights", impostor,
                             "--output", tmp_path / "out")
    errors = [line for line in err.splitlines() if "error:" in line]
    assert status != 0 and len(errors) == 1 and "--name NAME" in errors[0], err
    assert not (tmp_path / "out").exists()
