"""CurveZMQ on the ingest and publish sockets: allowed peers work, everyone else gets nothing in or out."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time

import pytest
import zmq

from trustvlm.runtime.cli import main
from trustvlm.runtime.config import ServiceConfig
from trustvlm.runtime.frames import Encoding, FrameHeader, send_frame
from trustvlm.runtime.messages import Decision
from trustvlm.runtime.ingest.security import (AllowList, SecurityConfig, SecurityError, configure_curve_client,
                                       create_keypair, load_keypair)

from .conftest import Subscriber, fault_image

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def keys(tmp_path):
    """server, cameras/{cam_ok}, controllers/{ctl_ok} allowed; stranger keys outside the allow-lists."""
    root = tmp_path / "keys"
    for folder, name in (("", "server"), ("cameras", "cam_ok"), ("controllers", "ctl_ok"), ("strangers", "cam_bad"),
                         ("strangers", "ctl_bad")):
        create_keypair(root / folder, name)
    for folder, name in (("cameras", "cam_ok"), ("controllers", "ctl_ok")):  # the allow-lists hold public keys only
        secret = root / folder / f"{name}.key_secret"
        secret.rename(root / f"{name}.key_secret")
    return root


def curve_socket(context, kind: int, keys, client: str | None):
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDTIMEO, 2000)
    if client is not None:
        secret = keys / f"{client}.key_secret"
        if not secret.exists():
            secret = keys / "strangers" / f"{client}.key_secret"
        configure_curve_client(sock, secret, keys / "server.key")
    return sock


def subscriber(context, endpoint: str, keys, client: str | None) -> Subscriber:
    sock = curve_socket(context, zmq.SUB, keys, client)
    sock.setsockopt(zmq.SUBSCRIBE, b"trust/")
    sock.connect(endpoint)
    return Subscriber(sock)


def send(sock, camera: str, seq: int) -> None:
    image = fault_image()
    send_frame(sock, FrameHeader(camera, seq, time.time_ns(), Encoding.RAW, image.shape, "uint8"), image.tobytes())


def test_only_allowed_cameras_feed_frames_and_only_allowed_subscribers_read(serve, fault_export, make_fault_bundle,
                                                                          tmp_path, keys, zmq_context):
    # Given the service with CURVE on both sockets, its key and two allow-list folders
    service = serve("--artifacts", str(fault_export), "--bundle", str(make_fault_bundle(tmp_path / "bundle")),
                    "--curve-server-key", str(keys / "server.key_secret"),
                    "--curve-ingest-clients", str(keys / "cameras"),
                    "--curve-publish-clients", str(keys / "controllers"))
    assert "(pull, bind, curve)" in service.line and "(msgpack, curve," in service.line, service.line
    # And subscribers: allowed, unknown key, no CURVE at all
    allowed = subscriber(zmq_context, service.publish, keys, "ctl_ok")
    stranger = subscriber(zmq_context, service.publish, keys, "ctl_bad")
    plain = subscriber(zmq_context, service.publish, keys, None)
    assert allowed.wait_for(lambda s: s.health, 20), "the allowed subscriber gets heartbeats"
    # When an unknown camera and a camera without CURVE send frames, then the allowed camera does
    senders = {}
    for client, camera in (("cam_bad", "intruder"), (None, "plain")):
        senders[camera] = curve_socket(zmq_context, zmq.PUSH, keys, client)
        senders[camera].connect(service.ingest)
        for seq in range(3):
            send(senders[camera], camera, seq)
    good = curve_socket(zmq_context, zmq.PUSH, keys, "cam_ok")
    good.connect(service.ingest)
    for seq in range(3):  # each waits for the previous one's decision, so none is superseded
        send(good, "cam", seq)
        assert allowed.wait_for(lambda s: len(s.decisions) > seq, 20), allowed.decisions
    # Then only the allowed camera's frames are decided (accepted: threshold -10)
    assert allowed.wait_for(lambda s: [d.seq for d in s.decisions] == [0, 1, 2], 20), allowed.decisions
    # And the refused peers have been turned away (the counters say so) before anything else is checked
    assert allowed.wait_for(lambda s: all(s.health[-1].counters.get(k, 0) >= 1 for k in (
        "auth_denied_ingest", "auth_denied_publish")), 20), allowed.health[-1].counters
    assert all(d.camera_id == "cam" and d.decision is Decision.ACCEPT for d in allowed.decisions), allowed.decisions
    counters = allowed.health[-1].counters
    assert counters["received"] == 3, counters
    assert counters.get("auth_denied_ingest", 0) >= 1 and counters.get("auth_denied_publish", 0) >= 1, counters
    # And the refused subscribers received nothing at all, not even a heartbeat
    for refused in (stranger, plain):
        assert not refused.poll(0.5) and refused.health == [] and refused.decisions == []
    refused_lines = [line for line in service.stderr().splitlines() if "refused a CURVE client" in line]
    assert any("trustvlm-ingest" in line for line in refused_lines), service.stderr()[-2000:]
    assert service.stop() == 0


def test_a_key_added_to_the_allow_list_lets_its_camera_in_when_it_connects_again(
        serve, fault_export, make_fault_bundle, tmp_path, keys, zmq_context):
    service = serve("--artifacts", str(fault_export), "--bundle", str(make_fault_bundle(tmp_path / "bundle")),
                    "--curve-server-key", str(keys / "server.key_secret"),
                    "--curve-ingest-clients", str(keys / "cameras"))
    reader = zmq_context.socket(zmq.SUB)  # the publisher is open in this test
    reader.setsockopt(zmq.LINGER, 0)
    reader.setsockopt(zmq.SUBSCRIBE, b"trust/")
    reader.connect(service.publish)
    open_subscriber = Subscriber(reader)
    assert open_subscriber.wait_for(lambda s: s.health, 20)
    late = curve_socket(zmq_context, zmq.PUSH, keys, "cam_bad")
    late.connect(service.ingest)
    send(late, "late", 0)
    assert open_subscriber.wait_for(lambda s: s.health[-1].counters.get("auth_denied_ingest", 0) >= 1, 10)
    assert open_subscriber.decisions == []
    # When its public key is copied into the allow-list folder and the camera connects again (libzmq does not
    # retry a connection refused by the authenticator), its frames get through
    (keys / "cameras" / "cam_bad.key").write_bytes((keys / "strangers" / "cam_bad.key").read_bytes())
    late.close(0)
    again = curve_socket(zmq_context, zmq.PUSH, keys, "cam_bad")
    again.connect(service.ingest)
    send(again, "late", 1)
    assert open_subscriber.wait_for(lambda s: [(d.camera_id, d.seq) for d in s.decisions] == [("late", 1)], 20)
    assert service.stop() == 0


def test_keys_are_written_private_and_never_overwritten(tmp_path, capsys):
    assert main(["keys", str(tmp_path / "k"), "--name", "robot-1"]) == 0
    assert "robot-1.key_secret (secret, mode 600)" in capsys.readouterr().out
    secret = tmp_path / "k" / "robot-1.key_secret"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    public, private = load_keypair(secret)
    assert len(public) == len(private) == 40
    assert main(["keys", str(tmp_path / "k"), "--name", "robot-1"]) == 1
    assert "already exist" in capsys.readouterr().err
    assert main(["keys", str(tmp_path / "k"), "--name", "../x"]) == 1


def test_security_config_is_checked_and_wired_through_flags_and_files(tmp_path, keys):
    with pytest.raises(ValueError, match="needs server_key"):
        SecurityConfig(ingest_clients=keys / "cameras")
    with pytest.raises(ValueError, match="neither ingest_clients nor publish_clients"):
        SecurityConfig(server_key=keys / "server.key_secret")
    with pytest.raises(ValueError, match=r"security.ingest_clients needs ingest.mode bind"):
        ServiceConfig.from_dict({"artifacts": "a", "bundle": "b", "ingest": {"mode": "connect"},
                                 "security": {"server_key": "s", "ingest_clients": "c"}})
    # Paths in a config file are relative to it; flags are relative to the working directory
    (tmp_path / "serve.json").write_text(json.dumps({
        "artifacts": "a", "bundle": "b", "security": {"server_key": "keys/server.key_secret",
                                                      "ingest_clients": "keys/cameras"}}))
    result = subprocess.run([sys.executable, "-m", "trustvlm.runtime.cli", "serve", "--config", "serve.json",
                             "--curve-publish-clients", "keys/controllers", "--dump-config"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=True)
    security = json.loads(result.stdout)["security"]
    assert security == {"server_key": str(tmp_path / "keys/server.key_secret"),
                        "ingest_clients": str(tmp_path / "keys/cameras"),
                        "publish_clients": str(tmp_path / "keys/controllers")}


def test_unusable_keys_refuse_to_start_with_one_line(fault_export, make_fault_bundle, tmp_path, keys):
    bundle = make_fault_bundle(tmp_path / "bundle")
    for server_key, clients, message in [
        (keys / "server.key", keys / "cameras", "no secret key"),           # the public file by mistake
        (tmp_path / "missing.key_secret", keys / "cameras", "cannot read the key file"),
        (keys / "server.key_secret", tmp_path / "nowhere", "allow-list folder"),
    ]:
        result = subprocess.run([sys.executable, "-m", "trustvlm.runtime.cli", "serve", "--artifacts",
                                 str(fault_export), "--bundle", str(bundle), "--ingest", "tcp://127.0.0.1:*",
                                 "--publish", "tcp://127.0.0.1:*", "--curve-server-key", str(server_key),
                                 "--curve-ingest-clients", str(clients)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_an_allow_list_skips_files_that_are_not_keys(tmp_path, keys):
    (keys / "cameras" / "junk.key").write_text("not a certificate\n")
    denied = []
    allow = AllowList(keys / "cameras", "trustvlm-ingest", lambda domain, key: denied.append(domain))
    ok_key = load_keypair(keys / "cam_ok.key_secret")[0]
    assert allow.callback("trustvlm-ingest", ok_key) is True
    assert allow.callback("trustvlm-ingest", b"x" * 40) is False and denied == ["trustvlm-ingest"]
    with pytest.raises(SecurityError, match="does not exist"):
        AllowList(tmp_path / "none", "trustvlm-ingest")
