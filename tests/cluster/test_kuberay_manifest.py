"""deploy/kuberay-rayservice.yaml: a RayService running deploy/Dockerfile's image and `serve --cluster`."""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
from pathlib import Path

import pytest

from trustvlm.cli import build_parser

yaml = pytest.importorskip("yaml", reason="PyYAML comes with the [cluster] extra (ray[serve])")

REPO = Path(__file__).resolve().parents[2]
MANIFEST = REPO / "deploy" / "kuberay-rayservice.yaml"


@pytest.fixture(scope="module")
def documents() -> dict:
    return {doc["kind"]: doc for doc in yaml.safe_load_all(MANIFEST.read_text())}


def test_every_pod_runs_the_image_that_deploy_dockerfile_builds(documents):
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    image = f"trustvlm-edge:{version}"
    assert f"-t {image} " in (REPO / "deploy" / "Dockerfile").read_text()
    cluster = documents["RayService"]["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"]] + [group["template"] for group in cluster["workerGroupSpecs"]]
    assert [container["image"] for pod in pods for container in pod["spec"]["containers"]] == [image] * len(pods)
    ray = pytest.importorskip("ray", reason="the [cluster] extra is not installed")  # the version it installs

    assert cluster["rayVersion"] == ray.__version__


def test_the_serve_application_is_the_gateway_with_valid_serve_flags(documents):
    spec = documents["RayService"]["spec"]
    [application] = yaml.safe_load(spec["serveConfigV2"])["applications"]
    module, _, attribute = application["import_path"].partition(":")
    assert (module, attribute) == ("trustvlm.cluster.kuberay", "build")
    assert importlib.util.find_spec(module) is not None
    args = build_parser().parse_args(["serve", *application["args"]["serve_args"]])
    assert args.cluster == "auto" and args.handler.__name__ == "run_serve_or_cluster"
    # one replica per worker pod, pinned by the resource the worker group advertises
    [workers] = spec["rayClusterConfig"]["workerGroupSpecs"]
    advertised = json.loads(json.loads(workers["rayStartParams"]["resources"]))
    assert dict(args.replica_resource) == {name: 1.0 for name in advertised} == {"trustvlm_replica": 1.0}
    assert args.replicas == workers["replicas"]
    # the Service exposes the ports the gateway binds, on the head pod where it runs
    ports = {port["name"]: port["targetPort"] for port in documents["Service"]["spec"]["ports"]}
    assert re.fullmatch(r"tcp://\*:(\d+)", args.ingest).group(1) == str(ports["ingest"])
    assert re.fullmatch(r"tcp://\*:(\d+)", args.publish).group(1) == str(ports["publish"])
    head = spec["rayClusterConfig"]["headGroupSpec"]["template"]
    assert documents["Service"]["spec"]["selector"].items() <= head["metadata"]["labels"].items()


def test_the_gateway_application_builds_from_its_args():
    pytest.importorskip("ray", reason="the [cluster] extra is not installed")
    from trustvlm.cluster.kuberay import GatewayProcess, build  # noqa: PLC0415 - needs ray

    application = build({"serve_args": ["--cluster", "auto"]})
    assert type(application).__name__ == "Application"
    assert GatewayProcess.ray_actor_options["resources"] == {"node:__internal_head__": 0.01}
