"""Real S3 servers the test suite starts by itself: Ceph's RADOS Gateway and moto.

Why two: RGW (Debian's `radosgw`, a production S3 implementation) checks what a real store
checks -- Content-MD5, signed payload hashes, the 5 MiB minimum part size -- so it is the
server that can catch a client sending wrong bytes. moto is a pure-Python imitation that
installs from PyPI in a second and starts fast, but accepts much that AWS would refuse, so
tests read `S3Endpoint.verifies_checksums` before expecting a refusal. No docker and no
network: RGW runs as a throw-away one-node Ceph cluster (one monitor, one OSD keeping its data
in RAM, no manager, no cephx) under a work directory that `stop()` deletes.

An operator's own server (AWS, MinIO, ...) can be used instead via TUSD_TEST_S3_* variables,
see `external_endpoint()`.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from minio import Minio

RGW_ACCESS_KEY = "TESTACCESSKEY0000001"
RGW_SECRET_KEY = "testsecretkey0000000000000000000000000001"
MOTO_ACCESS_KEY = "testing"
MOTO_SECRET_KEY = "testing"
DEFAULT_REGION = "us-east-1"

#: binaries the RGW recipe runs; all from `apt-get install ceph-mon ceph-osd radosgw`
RGW_TOOLS = ("monmaptool", "ceph-mon", "ceph", "ceph-osd", "radosgw", "radosgw-admin")
RGW_INSTALL_HINT = "apt-get install -y --no-install-recommends ceph-mon ceph-osd radosgw"


@dataclass(frozen=True)
class S3Endpoint:
    """Where an S3 server listens and how to sign for it.

    `endpoint` is "host:port" without a scheme, as the minio client wants it.
    `verifies_checksums`: the server refuses a part whose Content-MD5 or signed payload hash
    does not match its body (RGW, AWS, MinIO: yes; moto: no).
    """

    name: str
    endpoint: str
    access_key: str
    secret_key: str
    region: str
    secure: bool
    verifies_checksums: bool

    @property
    def url(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

    def client(self) -> Minio:
        return Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=self.secure,
            region=self.region,
        )


class ServerStartError(RuntimeError):
    """A test S3 server did not come up; the message carries the relevant log tails."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 20) -> str:
    """The last `lines` non-blank lines of a log, headed by its path ("" if none)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip()][-lines:]
    return f"--- last lines of {path}:\n" + "\n".join(kept) if kept else ""


def _wait_until(
    ready: Callable[[], bool], timeout: float, alive: Callable[[], bool], interval: float = 0.05
) -> bool:
    """Poll `ready` until it holds (True), the process dies or time runs out (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return True
        if not alive():
            return ready()
        time.sleep(interval)
    return False


def _http_answers(url: str, expect: int | None = None) -> bool:
    try:
        status = httpx.get(url, timeout=1).status_code
    except httpx.HTTPError:
        return False
    return expect is None or status == expect


# --- RADOS Gateway ----------------------------------------------------------------------


def tools_available_rgw() -> str | None:
    """None when RGW can be started here, else why not (for a skip message)."""
    missing = [tool for tool in RGW_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (install with: {RGW_INSTALL_HINT})"
    return None


def _ceph_conf(workdir: Path, fsid: str, mon_port: int, port: int) -> str:
    """A config for one mon and one in-memory OSD, tuned for a test's speed, not safety."""
    return f"""\
[global]
fsid = {fsid}
mon_host = v2:127.0.0.1:{mon_port}
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
ms_bind_ipv6 = false
# no cephx, and then the daemons' default "secure" connection mode to the mon cannot work
auth_cluster_required = none
auth_service_required = none
auth_client_required = none
ms_mon_client_mode = crc
keyring = /dev/null
client_mount_timeout = 30
rados_mon_op_timeout = 30
rados_osd_op_timeout = 30
# one OSD: pools of size 1, few placement groups, CRUSH chooses OSDs rather than hosts
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
mon_allow_pool_size_one = true
mon_warn_on_pool_no_redundancy = false
mon_max_pg_per_osd = 1000
osd_crush_chooseleaf_type = 0
mon_data_avail_warn = 2
mon_data_avail_crit = 1
mon_warn_on_insecure_global_id_reclaim_allowed = false
# the mon batches changes for 1 s by default: RGW's pool creations would take seconds
paxos_propose_interval = 0.05
paxos_min_wait = 0.01
# RGW starts while the OSD still boots; ops it sent meanwhile wait for a newer OSD map,
# which a client asks for on its objecter tick (5 s by default)
objecter_tick_interval = 0.2
# no admin sockets: unused here, and a long work directory would overflow a socket path
admin_socket =
run_dir = {workdir}/run
pid_file = {workdir}/run/$name.pid
log_file = {workdir}/log/$name.log
crash_dir = {workdir}/crash
[mon]
mon_data = {workdir}/mon/$id
[osd]
osd_data = {workdir}/osd/$id
osd_objectstore = memstore
memstore_device_bytes = {8 << 30}
osd_memory_target = {1 << 30}
[client.rgw.a]
rgw_frontends = beast endpoint=127.0.0.1:{port}
rgw_thread_pool_size = 64
"""


#: the daemons in the order stop() ends them: clients of the cluster first
_RGW_DAEMONS = ("client.rgw.a", "osd.0", "mon.a")
_DAEMON_COMMS = {"client.rgw.a": "radosgw", "osd.0": "ceph-osd", "mon.a": "ceph-mon"}


@dataclass
class RgwServer:
    """A running throw-away Ceph cluster with its gateway; `stop()` ends it and deletes it."""

    workdir: Path
    port: int
    mon_port: int
    endpoint: S3Endpoint
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.workdir / "ceph.conf"

    def log(self, name: str) -> Path:
        return self.workdir / "log" / f"{name}.log"

    def _daemon_pid(self, name: str) -> int | None:
        """The pid in `name`'s pid file, if it is that daemon of *this* cluster."""
        try:
            pid = int((self.workdir / "run" / f"{name}.pid").read_text().strip())
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        if comm != _DAEMON_COMMS[name] or str(self.conf).encode() not in cmdline:
            return None
        return pid

    def stop(self) -> None:
        """SIGKILL every daemon (the data is thrown away: no clean shutdown needed), rm -rf."""
        for name in _RGW_DAEMONS:
            pids = {self._daemon_pid(name)}
            process = self.processes.get(name)
            if process is not None and process.poll() is None:
                pids.add(process.pid)
            for pid in pids - {None}:
                assert pid is not None
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if process is not None:
                try:
                    process.wait(10)  # reap it: no zombies left behind
                except subprocess.TimeoutExpired:
                    pass
        self.processes.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # --- starting -----------------------------------------------------------------------

    def _fail(self, message: str, *names: str) -> ServerStartError:
        """Stop everything; the error shows the log and console output of `names`."""
        parts = [f"RGW in {self.workdir}: {message}"]
        for name in dict.fromkeys(names):  # each once, in order
            parts += [_tail(self.log(name)), _tail(self.workdir / "log" / f"{name}.out", 10)]
        error = ServerStartError("\n".join(part for part in parts if part))
        self.stop()
        return error

    def _run(self, name: str, args: list[str], timeout: float, *logs: str) -> str:
        """Run a one-shot tool, stderr to log/NAME.out; on failure show it and `logs`.

        Gives up early when a daemon started before dies: `ceph` would otherwise wait for
        a dead monitor until its connect timeout.
        """
        command = shlex.join(args)
        with open(self.workdir / "log" / f"{name}.out", "wb") as err:
            tool = subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                stdout, _ = tool.communicate(timeout=0.05)
                break
            except subprocess.TimeoutExpired:
                dead = [n for n, p in self.processes.items() if p.poll() is not None]
                if dead or time.monotonic() > deadline:
                    tool.kill()
                    tool.communicate()
                    why = f"{', '.join(dead)} exited" if dead else f"timed out after {timeout:g} s"
                    raise self._fail(f"`{command}`: {why}", name, *logs, *dead) from None
        if tool.returncode != 0:
            raise self._fail(f"`{command}` exited with {tool.returncode}", name, *logs)
        return stdout.decode().strip()

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        """Start a daemon in the foreground (-f), so we hold its handle and can reap it."""
        with open(self.workdir / "log" / f"{name}.out", "wb") as out:
            process = subprocess.Popen(
                [*args, "-f"],
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C meant for pytest must not hit it first
            )
        self.processes[name] = process
        return process

    def _start(self, timeout: float) -> None:
        conf = ["-c", str(self.conf)]
        ceph = ["ceph", *conf, "--connect-timeout", str(max(1, math.ceil(timeout)))]
        fsid = self.conf.read_text().split("fsid = ", 1)[1].split("\n", 1)[0]
        monmap = self.workdir / "run" / "monmap"

        self._run(
            "monmaptool",
            [
                "monmaptool",
                "--create",
                "--fsid",
                fsid,
                "--addv",
                "a",
                f"[v2:127.0.0.1:{self.mon_port}]",
                str(monmap),
            ],
            timeout,
        )
        self._run(
            "mkfs-mon", ["ceph-mon", *conf, "--mkfs", "-i", "a", "--monmap", str(monmap)], timeout
        )
        mon = self._spawn("mon.a", ["ceph-mon", *conf, "-i", "a"])

        # `osd new` waits for the monitor to answer (up to --connect-timeout): no extra poll
        osd_uuid = str(uuid.uuid4())
        osd_id = self._run("osd-new", [*ceph, "osd", "new", osd_uuid], timeout, "mon.a")
        if osd_id != "0":
            raise self._fail(f"'ceph osd new' gave id {osd_id!r}, expected 0", "mon.a")
        self._run(
            "mkfs-osd",
            ["ceph-osd", *conf, "-i", "0", "--mkfs", "--osd-uuid", osd_uuid],
            timeout,
            "osd.0",
        )
        osd = self._spawn("osd.0", ["ceph-osd", *conf, "-i", "0"])

        # The gateway's start-up blocks until the OSD is up (it creates its pools), so it
        # starts right away and one HTTP poll covers both: "GET /" answers 200 when ready.
        rgw = self._spawn("client.rgw.a", ["radosgw", *conf, "-n", "client.rgw.a"])
        daemons = {"mon.a": mon, "osd.0": osd, "client.rgw.a": rgw}

        def all_alive() -> bool:
            return all(p.poll() is None for p in daemons.values())

        if not _wait_until(lambda: _http_answers(self.endpoint.url + "/", 200), timeout, all_alive):
            dead = [name for name, p in daemons.items() if p.poll() is not None]
            what = f"{', '.join(dead)} exited" if dead else f"no answer after {timeout:g} s"
            raise self._fail(
                f"gateway on {self.endpoint.url} not ready: {what}",
                *(dead or ["client.rgw.a", "osd.0"]),
            )

        self._run(
            "user-create",
            [
                "radosgw-admin",
                *conf,
                "user",
                "create",
                "--uid=test",
                "--display-name=test",
                f"--access-key={self.endpoint.access_key}",
                f"--secret-key={self.endpoint.secret_key}",
            ],
            timeout,
            "client.admin",
        )


def start_rgw(workdir: Path, port: int, timeout: float = 60.0) -> RgwServer:
    """Start a one-node Ceph cluster plus RGW on 127.0.0.1:`port` with a fixed S3 user.

    `workdir` must be absent or empty; it holds config, logs and the monitor's store and is
    deleted by `stop()`. `timeout` bounds each step. Takes about 1.5 s.
    """
    reason = tools_available_rgw()
    if reason:
        raise ServerStartError(reason)
    if workdir.exists() and any(workdir.iterdir()):
        raise ServerStartError(f"{workdir} is not empty; refusing to use it for RGW")
    workdir = workdir.resolve()
    for sub in ("mon/a", "osd/0", "run", "log"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    mon_port = free_port()
    (workdir / "ceph.conf").write_text(_ceph_conf(workdir, str(uuid.uuid4()), mon_port, port))
    endpoint = S3Endpoint(
        name="rgw",
        endpoint=f"127.0.0.1:{port}",
        access_key=RGW_ACCESS_KEY,
        secret_key=RGW_SECRET_KEY,
        region=DEFAULT_REGION,
        secure=False,
        verifies_checksums=True,
    )
    server = RgwServer(workdir, port, mon_port, endpoint)
    try:
        server._start(timeout)
    except ServerStartError:
        raise
    except BaseException:
        server.stop()
        raise
    return server


# --- moto ---------------------------------------------------------------------------------


@dataclass
class MotoServer:
    """moto's S3 imitation as a child process; `stop()` ends it and deletes `workdir`."""

    workdir: Path
    port: int
    endpoint: S3Endpoint
    process: subprocess.Popen[bytes]

    @property
    def log_path(self) -> Path:
        return self.workdir / "moto.log"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_moto(workdir: Path, port: int, timeout: float = 30.0) -> MotoServer:
    """Start `python -m moto.server` on 127.0.0.1:`port` and wait until it answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "AWS_DEFAULT_REGION": DEFAULT_REGION}
    with open(workdir / "moto.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=workdir,
        )
    endpoint = S3Endpoint(
        name="moto",
        endpoint=f"127.0.0.1:{port}",
        access_key=MOTO_ACCESS_KEY,
        secret_key=MOTO_SECRET_KEY,
        region=DEFAULT_REGION,
        secure=False,
        verifies_checksums=False,
    )
    server = MotoServer(workdir, port, endpoint, process)
    # moto answers any path; its own dashboard URL is cheap and proves the app is loaded
    if not _wait_until(
        lambda: _http_answers(endpoint.url + "/moto-api/"), timeout, lambda: process.poll() is None
    ):
        message = f"moto on {endpoint.url} not ready (exit code {process.poll()})\n" + _tail(
            server.log_path
        )
        server.stop()
        raise ServerStartError(message)
    return server


# --- an operator's server -------------------------------------------------------------------


def external_endpoint() -> S3Endpoint | None:
    """The server named by TUSD_TEST_S3_ENDPOINT (http[s]://host[:port]), if set.

    Keys from TUSD_TEST_S3_ACCESS_KEY / TUSD_TEST_S3_SECRET_KEY, region from
    TUSD_TEST_S3_REGION (default us-east-1). Assumed to be a real store that checks digests.
    """
    url = os.environ.get("TUSD_TEST_S3_ENDPOINT", "").strip()
    if not url:
        return None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"TUSD_TEST_S3_ENDPOINT must be http(s)://host[:port], not {url!r}")
    return S3Endpoint(
        name="external",
        endpoint=parts.netloc,
        access_key=os.environ.get("TUSD_TEST_S3_ACCESS_KEY", ""),
        secret_key=os.environ.get("TUSD_TEST_S3_SECRET_KEY", ""),
        region=os.environ.get("TUSD_TEST_S3_REGION", "") or DEFAULT_REGION,
        secure=parts.scheme == "https",
        verifies_checksums=True,
    )


# --- bucket helpers (minio) -------------------------------------------------------------------


def make_bucket(endpoint: S3Endpoint, name: str) -> None:
    """Create bucket `name` in the endpoint's region (RGW wants no other location)."""
    endpoint.client().make_bucket(name)


def list_all(endpoint: S3Endpoint, bucket: str, prefix: str = "") -> list[str]:
    """Every object key under `prefix`, recursively, sorted."""
    objects = endpoint.client().list_objects(bucket, prefix=prefix or None, recursive=True)
    return sorted(obj.object_name for obj in objects if obj.object_name is not None)


def list_multipart_uploads(
    endpoint: S3Endpoint, bucket: str, prefix: str = ""
) -> list[tuple[str, str]]:
    """(key, upload id) of every multipart upload begun and not completed/aborted.

    minio has no public call for this; its private `_list_multipart_uploads` is fine for tests.
    """
    client = endpoint.client()
    found: list[tuple[str, str]] = []
    key_marker: str | None = None
    upload_id_marker: str | None = None
    while True:
        result = client._list_multipart_uploads(
            bucket,
            prefix=prefix or None,
            key_marker=key_marker,
            upload_id_marker=upload_id_marker,
        )
        found += [(u.object_name, u.upload_id or "") for u in result.uploads]
        if not result.is_truncated or not result.uploads:
            return found
        # minio 7.2 stores NextUploadIdMarker under a misspelt attribute name: use the last
        # upload instead, which is what the markers mean anyway
        key_marker, upload_id_marker = result.uploads[-1].object_name, result.uploads[-1].upload_id
