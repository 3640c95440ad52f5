"""KubeRay ``RayService`` entry point: the gateway (``trustvlm serve --cluster auto``) kept running on the head pod.

deploy/kuberay-rayservice.yaml names ``trustvlm.cluster.kuberay:build`` as its Serve application, with
the ``serve`` flags as its ``serve_args``. The application is one replica on the head node (the pod
whose Service exposes the ZeroMQ ports to cameras and robots) that runs the gateway as a child
process: that process is the Ray driver that deploys the scoring replicas
(:mod:`trustvlm.cluster.gateway`). Its health check fails when the gateway has exited, so
KubeRay's RayService restarts it as it restarts any unhealthy Serve application.
"""

from __future__ import annotations

import subprocess
import sys

from ray import serve

__all__ = ["GatewayProcess", "build"]

#: Ray's built-in resource of the head node: the gateway runs where the head pod's Service points.
HEAD_NODE_RESOURCE = "node:__internal_head__"


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0, "resources": {HEAD_NODE_RESOURCE: 0.01}},
                  health_check_period_s=5.0)
class GatewayProcess:
    """Runs ``python -m trustvlm serve <serve_args>`` and reports unhealthy once it has exited."""

    def __init__(self, serve_args: list[str]):
        if "--cluster" not in serve_args:
            raise ValueError(f"serve_args should contain --cluster (e.g. --cluster auto), but got {serve_args}")
        self.process = subprocess.Popen([sys.executable, "-m", "trustvlm", "serve", *serve_args])

    def check_health(self) -> None:
        status = self.process.poll()
        if status is not None:
            raise RuntimeError(f"trustvlm serve exited with status {status}")

    def __del__(self):
        process = getattr(self, "process", None)
        if process is not None and process.poll() is None:
            process.terminate()  # graceful: in-flight frames are answered, a final heartbeat is sent
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()


def build(args: dict) -> serve.Application:
    """Serve application builder (``import_path: trustvlm.cluster.kuberay:build``; ``args: {serve_args: [...]}``)."""
    return GatewayProcess.bind(list(args["serve_args"]))
