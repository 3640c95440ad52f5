"""`ServeProcess`: start `trustvlm serve` from a script, learn its endpoints, stop it; and when it does not start."""

from __future__ import annotations

import pytest
import zmq

from trustvlm.pipelines.serve_process import ServeProcess, ServiceStartError, parse_listening_line
from trustvlm.runtime.messages import HealthMessage, HealthStatus, decode_body

pytestmark = pytest.mark.timeout(120)


def test_the_listening_line_gives_both_endpoints():
    line = ("trustvlm serve: listening ingest=tcp://127.0.0.1:40001 (pull, bind) publish=tcp://127.0.0.1:40002 "
            "(msgpack, trust/<camera_id>, trust/_health every 200 ms) model=m bundle=b accept trustvlm >= 0.5")
    assert parse_listening_line(line) == ("tcp://127.0.0.1:40001", "tcp://127.0.0.1:40002")
    assert parse_listening_line("trustvlm serve: loading the bundle") is None


def test_serve_starts_on_random_loopback_ports_publishes_and_stops_cleanly(tmp_path, fault_export, make_fault_bundle):
    bundle = make_fault_bundle(tmp_path / "bundle")
    # Given a service started on random loopback ports
    with ServeProcess(fault_export, bundle, tmp_path / "logs", ("--heartbeat-ms", "100", "--threads", "1",
                                                                 "--no-watch")) as serve:
        # Then the endpoints are bound ports, not the wildcard
        for endpoint in (serve.ingest, serve.publish):
            assert endpoint.startswith("tcp://127.0.0.1:") and not endpoint.endswith("*"), endpoint
        # And a subscriber on the publish endpoint hears its heartbeat
        with zmq.Context() as context, context.socket(zmq.SUB) as sub:
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"trust/")
            sub.connect(serve.publish)
            assert sub.poll(30_000), f"no heartbeat from {serve.publish}; {serve.stderr_tail()}"
            assert isinstance(decode_body(sub.recv_multipart()[1]), HealthMessage)
            # When it is stopped, it says goodbye ('stopped' heartbeat) and exits 0
            serve.request_stop()
            statuses = []
            while sub.poll(30_000):
                message = decode_body(sub.recv_multipart()[1])
                if isinstance(message, HealthMessage):
                    statuses.append(message.status)
                    if message.status is HealthStatus.STOPPED:
                        break
            assert statuses and statuses[-1] is HealthStatus.STOPPED, statuses
        assert serve.stop() == 0, serve.stderr_tail()
    assert serve.child.process.returncode == 0


def test_serve_that_exits_before_listening_is_one_error_quoting_its_stderr(tmp_path):
    # Given folders with no export and no bundle in them
    serve = ServeProcess(tmp_path / "no_export", tmp_path / "no_bundle", tmp_path / "logs")
    # Then starting it fails with its exit status and its own one-line error, and no process is left behind
    with pytest.raises(ServiceStartError, match=r"(?s)trustvlm serve did not start: serve exited with status 1 before "
                                                r"printing .*trustvlm serve: error: ") as error:
        serve.start()
    assert f"no bundle.json in {tmp_path / 'no_bundle'}" in str(error.value)
    assert serve.child.process.poll() == 1
