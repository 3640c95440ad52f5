"""Optional CurveZMQ authentication and encryption on the ingest and publish sockets.

When to use it: whenever a port of the service can be reached by anything but trusted processes.
Without it, anyone who reaches the ingest port can feed frames, and anyone who reaches the
publish port can read every decision. With it, the service is the CurveZMQ *server* of both
sockets, every connection is encrypted, and a client gets in only if its public key is in the
allow-list folder of that socket (cameras for ingest, controllers for publish). A client that is
refused never completes the handshake: its frames never reach the service, and it receives
nothing, not even the heartbeat.

Keys are ZeroMQ certificate files (the ``zmq.auth`` format). ``trustvlm keys DIR --name NAME``
(:func:`create_keypair`, or ``zmq.auth.create_certificates``) writes ``NAME.key`` (public: hand
it out) and ``NAME.key_secret`` (keep it; written with mode 600). The service needs its own
``.key_secret`` (:attr:`SecurityConfig.server_key`) and, per socket, a folder of the clients'
``.key`` files. Each client needs its own ``.key_secret`` and the service's ``.key``
(:func:`configure_curve_client`).

Handshakes are checked by a ZAP handler (pyzmq's ``ThreadAuthenticator``) against the folder,
which is re-read when its content changes: a new key is let in from its next connection; a
removed key is refused from its next connection (an established connection stays). A refused
client is not retried by libzmq: after its key has been added it has to connect again (a new
socket, or disconnect and connect). Refusals are counted (``auth_denied_ingest``,
``auth_denied_publish`` in the heartbeat) and logged once per key. The sockets
set ``ZAP_ENFORCE_DOMAIN``, so if the handler is not running, connections are refused rather than
let in unchecked. CurveZMQ needs the service to bind the socket (it is the server); ``connect``
mode with CURVE is refused at start.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("trustvlm.runtime.ingest.security")

INGEST_DOMAIN = "trustvlm-ingest"
PUBLISH_DOMAIN = "trustvlm-publish"
PUBLIC_SUFFIX, SECRET_SUFFIX = ".key", ".key_secret"
_Z85_KEY_LENGTH = 40
_MAX_LOGGED_KEYS = 256

DeniedHandler = Callable[[str, str], None]


class SecurityError(ValueError):
    """Key files or allow-lists that cannot be used."""


@dataclass(frozen=True)
class SecurityConfig:
    """CurveZMQ settings of the service (all off by default).

    Attributes:
        server_key: The service's secret certificate (``NAME.key_secret``).
        ingest_clients: Folder of the public keys (``*.key``) allowed to send frames; None: the
            ingest socket is open (no CURVE).
        publish_clients: Folder of the public keys allowed to subscribe; None: the publish socket
            is open (no CURVE).
    """

    server_key: Path | None = None
    ingest_clients: Path | None = None
    publish_clients: Path | None = None

    def __post_init__(self) -> None:
        folders = self.ingest_clients is not None or self.publish_clients is not None
        if folders and self.server_key is None:
            raise ValueError("security: an allow-list folder (ingest_clients or publish_clients) needs server_key, "
                             "the service's secret key file (trustvlm keys DIR --name server)")
        if self.server_key is not None and not folders:
            raise ValueError("security: server_key is set but neither ingest_clients nor publish_clients is; give at "
                             "least one allow-list folder (a CURVE server without one would let any key in)")

    @property
    def enabled(self) -> bool:
        return self.server_key is not None


@dataclass(frozen=True)
class CurveServer:
    """What a socket needs to be a CurveZMQ server checked by the ZAP handler of `domain`."""

    public_key: bytes
    secret_key: bytes
    domain: str

    def apply(self, socket: zmq.Socket) -> None:
        """Make `socket` a CURVE server (call before bind)."""
        socket.setsockopt(zmq.CURVE_SERVER, 1)
        socket.setsockopt(zmq.CURVE_PUBLICKEY, self.public_key)
        socket.setsockopt(zmq.CURVE_SECRETKEY, self.secret_key)
        socket.setsockopt(zmq.ZAP_DOMAIN, self.domain.encode())
        socket.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)


def _check_key(key: bytes | None, path: Path, what: str) -> bytes:
    if key is None or len(key) != _Z85_KEY_LENGTH:
        raise SecurityError(f"{path}: no {what} of {_Z85_KEY_LENGTH} Z85 characters found; expected a ZeroMQ "
                            f"certificate file as written by `trustvlm keys` or zmq.auth.create_certificates")
    return key


def load_keypair(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a ``.key_secret`` certificate file.

    Raises:
        SecurityError: A missing file, or one without both keys.
    """
    path = Path(path)
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as error:
        raise SecurityError(f"cannot read the key file {path}: {error}") from error
    _check_key(public, path, "public key")
    _check_key(secret, path, "secret key (is this the .key file instead of the .key_secret?)")
    if os.name == "posix" and path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s is readable by other users (mode %o); chmod 600 it", path, path.stat().st_mode & 0o777)
    return public, secret


def load_public_key(path: str | os.PathLike) -> bytes:
    """The Z85 public key of a ``.key`` (or ``.key_secret``) certificate file."""
    path = Path(path)
    try:
        public, _ = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as error:
        raise SecurityError(f"cannot read the key file {path}: {error}") from error
    return _check_key(public, path, "public key")


def create_keypair(folder: str | os.PathLike, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.key_secret`` (mode 600) into `folder`; never overwrites.

    Raises:
        SecurityError: A bad name, or files of that name already there.
    """
    folder = Path(folder)
    if not name or not all(c.isalnum() or c in "_.-" for c in name) or name.startswith("."):
        raise SecurityError(f"key name should be letters, digits, '_', '.', '-' (not starting with '.'), "
                            f"but got {name!r}")
    public, secret = folder / f"{name}{PUBLIC_SUFFIX}", folder / f"{name}{SECRET_SUFFIX}"
    existing = [str(p) for p in (public, secret) if p.exists()]
    if existing:
        raise SecurityError(f"{existing} already exist; remove them or choose another --name")
    folder.mkdir(parents=True, exist_ok=True)
    old_umask = os.umask(0o077)  # the secret file is never readable by others, not even briefly
    try:
        public_file, secret_file = zmq.auth.create_certificates(folder, name)
    finally:
        os.umask(old_umask)
    os.chmod(public_file, 0o644)
    os.chmod(secret_file, 0o600)
    return Path(public_file), Path(secret_file)


def configure_curve_client(socket: zmq.Socket, client_secret_key: str | os.PathLike,
                           server_public_key: str | os.PathLike) -> None:
    """Make `socket` a CurveZMQ client of the service (call before connect).

    Args:
        socket: A PUSH/REQ/PUB (camera) or SUB (controller) socket.
        client_secret_key: This client's ``.key_secret``; its ``.key`` must be in the service's
            allow-list folder.
        server_public_key: The service's ``.key``.
    """
    public, secret = load_keypair(client_secret_key)
    socket.setsockopt(zmq.CURVE_PUBLICKEY, public)
    socket.setsockopt(zmq.CURVE_SECRETKEY, secret)
    socket.setsockopt(zmq.CURVE_SERVERKEY, load_public_key(server_public_key))


class AllowList:
    """Public keys allowed on one socket: the ``*.key`` files of a folder, re-read when it changes.

    Used as the ZAP credentials provider of one domain (``callback`` runs on the authenticator's
    thread).
    """

    def __init__(self, folder: str | os.PathLike, domain: str, on_denied: DeniedHandler | None = None):
        self.folder, self.domain = Path(folder), domain
        if not self.folder.is_dir():
            raise SecurityError(f"allow-list folder {self.folder} does not exist; put the clients' .key files there")
        self._on_denied = on_denied
        self._lock = threading.Lock()
        self._signature: tuple | None = None
        self._keys: frozenset[bytes] = frozenset()
        self._logged: set[bytes] = set()
        self.refresh()
        if not self._keys:
            log.warning("allow-list %s has no *.key files: no client can connect to %s until one is added",
                        self.folder, domain)

    def _folder_signature(self) -> tuple:
        entries = []
        with os.scandir(self.folder) as scan:
            for entry in scan:
                if entry.name.endswith(PUBLIC_SUFFIX):
                    info = entry.stat()
                    entries.append((entry.name, info.st_ino, info.st_size, info.st_mtime_ns))
        return tuple(sorted(entries))

    def refresh(self) -> frozenset[bytes]:
        """Re-read the folder if a key file was added, removed or changed; return the keys."""
        signature = self._folder_signature()
        with self._lock:
            if signature != self._signature:
                keys = set()
                for name, *_ in signature:
                    try:
                        keys.add(load_public_key(self.folder / name))
                    except SecurityError as error:
                        log.warning("allow-list %s: skipping %s", self.folder, error)
                self._keys, self._signature = frozenset(keys), signature
                log.info("allow-list for %s: %d client keys from %s", self.domain, len(keys), self.folder)
            return self._keys

    def callback(self, domain: str, key: bytes) -> bool:
        """ZAP credentials check: is the client's Z85 public `key` in the folder?"""
        try:
            allowed = key in self.refresh()
        except OSError as error:  # the folder went away: refuse, keep running
            log.error("allow-list %s unreadable (%s): refusing %s", self.folder, error, domain)
            allowed = False
        if not allowed:
            if key not in self._logged and len(self._logged) < _MAX_LOGGED_KEYS:
                self._logged.add(key)
                log.warning("refused a CURVE client on %s: public key %s is not in %s", domain,
                            key.decode("ascii", "replace"), self.folder)
            if self._on_denied is not None:
                self._on_denied(domain, key.decode("ascii", "replace"))
        return allowed


class CurveGate:
    """The ZAP handler of a context and the server keys of the two sockets.

    ``start`` before any socket is bound; ``stop`` after they are closed.
    """

    def __init__(self, config: SecurityConfig, context: zmq.Context, on_denied: DeniedHandler | None = None):
        self.config, self.context = config, context
        self.public_key, self.secret_key = load_keypair(config.server_key)
        self.allow_lists = {domain: AllowList(folder, domain, on_denied)
                            for domain, folder in ((INGEST_DOMAIN, config.ingest_clients),
                                                   (PUBLISH_DOMAIN, config.publish_clients)) if folder is not None}
        self._authenticator: ThreadAuthenticator | None = None

    def server_for(self, domain: str) -> CurveServer | None:
        """The CURVE settings of the socket of `domain`, or None when that socket is open."""
        if domain not in self.allow_lists:
            return None
        return CurveServer(self.public_key, self.secret_key, domain)

    def start(self) -> None:
        authenticator = ThreadAuthenticator(self.context, log=logging.getLogger("trustvlm.runtime.zap"))
        authenticator.start()
        for domain, allow_list in self.allow_lists.items():
            authenticator.configure_curve_callback(domain, credentials_provider=allow_list)
        self._authenticator = authenticator

    @property
    def alive(self) -> bool:
        return self._authenticator is not None and self._authenticator.is_alive()

    def stop(self) -> None:
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
