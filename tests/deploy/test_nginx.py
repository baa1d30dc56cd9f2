"""deploy/nginx/default.conf in front of two real service processes, on loopback.

Debian's nginx (`make nginx`) runs the repository's file with exactly two lines replaced
(render_for_loopback): `listen` takes a free loopback port, and the upstream's one
`server api:8000 ... resolve ...;` line becomes one line per local backend with the same
parameters minus `resolve` (Docker's DNS exists only in compose, and Debian 12's nginx 1.22
predates `resolve`). Everything else (retries, timeouts, X-Request-ID, keep-alive) is the file.
"""

from __future__ import annotations

import getpass
import grp
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from tests.deploy.processes import ROOT, Service, free_port, start_repo_service
from tests.logs import json_lines

pytestmark = pytest.mark.slow

CONF = ROOT / "deploy" / "nginx" / "default.conf"
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
LISTEN = re.compile(r"^(\s*)listen 8080;$", re.MULTILINE)
UPSTREAM_SERVER = re.compile(r"^(\s*)server api:8000 (.*)resolve ?(.*);$", re.MULTILINE)
SIGNAL = {"signals": [[0.0] * 64]}


def render_for_loopback(conf: str, listen_port: int, backend_ports: list[int]) -> str:
    assert len(LISTEN.findall(conf)) == 1, "expected one `listen 8080;` line in default.conf"
    assert len(UPSTREAM_SERVER.findall(conf)) == 1, "expected one `server api:8000 ... resolve` line"
    conf = LISTEN.sub(rf"\g<1>listen 127.0.0.1:{listen_port};", conf)
    return UPSTREAM_SERVER.sub(
        lambda m: "\n".join(f"{m[1]}server 127.0.0.1:{p} {m[2]}{m[3]};" for p in backend_ports), conf
    )


def main_conf(prefix: Path, server_conf: Path, *, user: str | None = None, temp: Path | None = None) -> str:
    """What the nginx image's /etc/nginx/nginx.conf provides, with every path in `prefix`: the
    workers run as `user` (default: this process's), their temporary files under `temp`."""
    temp = temp or prefix
    return f"""
user {user or getpass.getuser()};
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access-default.log;
    client_body_temp_path {temp}/client_body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {server_conf};
}}
"""


def assert_nginx_installed() -> None:
    assert Path(NGINX).exists(), "nginx is not installed: run `make nginx` (Debian's nginx)"


def nginx_config(
    tmp_path: Path,
    backend_ports: list[int],
    *,
    user: str | None = None,
    temp: Path | None = None,
    edit: Callable[[str], str] = lambda conf: conf,
) -> tuple[Path, int]:
    assert_nginx_installed()
    port = free_port()
    server_conf = tmp_path / "default.conf"
    server_conf.write_text(render_for_loopback(edit(CONF.read_text()), port, backend_ports))
    conf = tmp_path / "nginx.conf"
    conf.write_text(main_conf(tmp_path, server_conf, user=user, temp=temp))
    return conf, port


def test_config_passes_nginx_t(tmp_path: Path) -> None:
    conf, _ = nginx_config(tmp_path, [free_port(), free_port()])
    r = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True)
    assert r.returncode == 0, f"nginx -t failed:\n{r.stderr}"
    assert "test is successful" in r.stderr, r.stderr


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[list[Service]]:
    services = [start_repo_service(tmp_path, f"backend-{i}") for i in range(2)]
    try:
        for s in services:
            s.wait_ready()
        yield services
    finally:
        for s in services:
            s.stop()


@contextmanager
def running_nginx(
    tmp_path: Path, backend_ports: list[int], edit: Callable[[str], str] = lambda conf: conf
) -> Iterator[tuple[str, Path]]:
    """nginx in front of `backend_ports`: its URL and its access log (the file's /dev/stdout).
    ``edit``: a change to default.conf first (a shorter timeout, say)."""
    conf, port = nginx_config(tmp_path, backend_ports, edit=edit)
    access_log = tmp_path / "access.log"
    with access_log.open("wb") as out:
        nginx = subprocess.Popen(
            [NGINX, "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        # Wait for nginx's port, not for a request through it: a request now would already
        # count against a backend (max_fails) and change what the test sees.
        deadline = time.monotonic() + 10
        while True:
            assert nginx.poll() is None, f"nginx exited:\n{(tmp_path / 'error.log').read_text()}"
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx does not listen"
                time.sleep(0.1)
        yield url, access_log
    finally:
        nginx.terminate()
        nginx.wait(timeout=10)


@pytest.fixture
def proxy(tmp_path: Path, backends: list[Service]) -> Iterator[tuple[str, Path]]:
    with running_nginx(tmp_path, [port_of(s) for s in backends]) as running:
        yield running


def port_of(service: Service) -> int:
    return int(service.url.rsplit(":", 1)[1])


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Logs are written just after the response is sent: poll for them a little."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def served_ids(service: Service, prefix: str) -> set[str]:
    """Request ids of `prefix` the service logged (one JSON line per request)."""
    ids = (str(doc.get("request_id")) for doc in json_lines(service.log()))
    return {i for i in ids if re.fullmatch(rf"{prefix}-\d+", i)}


def test_spreads_requests_and_passes_request_ids(proxy: tuple[str, Path], backends: list[Service]) -> None:
    url, access_log = proxy
    with httpx.Client(base_url=url, timeout=30) as client:
        for i in range(10):
            r = client.post("/v1/detect", json=SIGNAL, headers={"X-Request-ID": f"spread-{i}"})
            assert r.status_code == 200, r.text
            assert r.headers["x-request-id"] == f"spread-{i}", "the client's X-Request-ID was not kept"
        anonymous = client.post("/v1/detect", json=SIGNAL)
    assert anonymous.status_code == 200, anonymous.text
    generated = anonymous.headers["x-request-id"]
    # The api echoes the id it received: nginx's own $request_id, which nginx logged too.
    assert re.fullmatch(r"[0-9a-f]{32}", generated), generated
    assert eventually(lambda: f"request_id={generated} " in access_log.read_text()), (
        "nginx did not pass its generated id"
    )
    everything = {f"spread-{i}" for i in range(10)}
    assert eventually(lambda: set.union(*(served_ids(s, "spread") for s in backends)) == everything)
    for s in backends:
        assert served_ids(s, "spread"), f"backend {s.url} got none of the requests"


def test_an_id_the_api_would_not_take_is_replaced_by_one_of_nginx(proxy: tuple[str, Path]) -> None:
    # The api keeps an X-Request-ID of 1-128 letters, digits and ._:- only, and makes its own
    # for any other: nginx must pass and log that same id, or its log and the api's disagree.
    url, access_log = proxy
    for sent in ["two words", "x" * 129, "a;b"]:
        r = httpx.post(f"{url}/v1/detect", json=SIGNAL, headers={"X-Request-ID": sent}, timeout=30)
        assert r.status_code == 200, r.text
        used = r.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", used), f"sent {sent!r}, the api used {used!r}"
        assert eventually(lambda used=used: f"request_id={used} " in access_log.read_text()), (
            f"sent {sent!r}: nginx logged another id than the api used ({used})"
        )


def test_no_request_lost_when_a_backend_stops(proxy: tuple[str, Path], backends: list[Service]) -> None:
    url, access_log = proxy
    statuses: dict[int, int] = {}

    def send(start: int, count: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            for i in range(start, start + count):
                r = client.post("/v1/detect", json=SIGNAL, headers={"X-Request-ID": f"stop-{i}"})
                statuses[i] = r.status_code

    # Two clients keep requests in flight while the first backend shuts down.
    clients = [threading.Thread(target=send, args=(k * 1000, 150)) for k in range(2)]
    for c in clients:
        c.start()
    deadline = time.monotonic() + 20
    while len(statuses) < 40 and time.monotonic() < deadline:
        time.sleep(0.01)
    stopped, survivor = backends
    assert stopped.stop() == 0, f"backend did not stop cleanly:\n{stopped.log()}"
    for c in clients:
        c.join(timeout=60)
    assert len(statuses) == 300, f"only {len(statuses)} of 300 requests finished"
    lost = {i: s for i, s in statuses.items() if s != 200}
    assert not lost, f"requests failed while a backend stopped: {lost}"
    assert served_ids(stopped, "stop"), "the stopped backend served nothing before it stopped"
    assert eventually(lambda: bool(served_ids(survivor, "stop"))), "the surviving backend served nothing"
    # Some request did reach the stopping backend and was retried on the other one: nginx
    # logs both attempts, e.g. upstream=[127.0.0.1:A, 127.0.0.1:B].
    assert eventually(lambda: access_log.read_text().count("request_id=stop-") == 300), (
        "nginx logged fewer requests"
    )
    retried = re.findall(r"request_id=stop-\S+ upstream=\[[^]]*, ", access_log.read_text())
    assert retried, "no request was retried: the test did not exercise the failover"


class CrashingBackend:
    """A replica that dies mid-request: reads the request, then closes without answering."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.requests: list[bytes] = []  # their request lines
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with suppress(OSError):  # close() below
            while True:
                conn, _ = self.socket.accept()
                with conn:
                    self.requests.append(conn.recv(65536).split(b"\r\n", 1)[0])

    def close(self) -> None:
        self.socket.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        self.socket.close()


def test_post_retried_after_a_backend_dropped_it(tmp_path: Path) -> None:
    # The request reached the replica before it failed, so nginx retries it only because
    # of `non_idempotent`: detection is a pure function of the body (see default.conf).
    crashing = CrashingBackend()
    healthy = start_repo_service(tmp_path, "healthy")
    try:
        healthy.wait_ready()
        with running_nginx(tmp_path, [crashing.port, port_of(healthy)]) as (url, _):
            statuses = [httpx.post(f"{url}/v1/detect", json=SIGNAL, timeout=30).status_code for _ in range(4)]
    finally:
        crashing.close()
        healthy.stop()
    assert b"POST /v1/detect HTTP/1.1" in crashing.requests, (
        f"no POST reached the crashing backend: {crashing.requests}"
    )
    assert statuses == [200] * 4, f"a POST dropped by one backend was not retried on the other: {statuses}"


class FullForAMomentBackend:
    """A replica whose queue is full for a moment: its first request waits until every replica
    has one (a burst), then gets 503 with Retry-After, as a full queue answers; then 200."""

    def __init__(self, burst: threading.Barrier) -> None:
        self.requests = 0
        backend, lock = self, threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                with lock:
                    backend.requests += 1
                    first = backend.requests == 1
                if first:
                    with suppress(threading.BrokenBarrierError):
                        burst.wait(timeout=10)
                status, body = (503, b'{"detail":"queue full"}') if first else (200, b"{}")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Retry-After", "1")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_moment_of_full_queues_takes_no_replica_out(tmp_path: Path) -> None:
    # Every replica answers one 503 at the same moment (a burst filled their queues), and has
    # room again right after. A 503 that took a replica out of rotation (max_fails) would leave
    # nginx with no replica at all: 502 "no live upstreams" to everyone for fail_timeout.
    burst = threading.Barrier(2)
    backends = [FullForAMomentBackend(burst) for _ in range(2)]
    try:
        with running_nginx(tmp_path, [b.port for b in backends]) as (url, _):

            def post(_: int) -> int:
                return httpx.post(f"{url}/v1/detect", json=SIGNAL, timeout=30).status_code

            with ThreadPoolExecutor(2) as pool:
                during = list(pool.map(post, range(2)))
            after = [post(i) for i in range(4)]
    finally:
        for b in backends:
            b.close()
    assert not burst.broken, "the two requests of the burst did not reach both replicas at once"
    assert after == [200] * 4, f"after a moment of full queues, nginx refused the replicas: {after}"
    assert during == [200] * 2, f"the burst's requests were not retried on the other replica: {during}"


def test_admin_routes_are_not_served_to_the_outside(tmp_path: Path) -> None:
    # A hot reload through the entry point would reach one replica of several, and without API
    # keys anyone who reaches the port could start reloads: nginx answers 403 itself.
    recorder = CrashingBackend()  # records every request that reaches it
    try:
        with running_nginx(tmp_path, [recorder.port]) as (url, _):
            paths = ["/admin/models/bump/reload", "//admin/models/bump/reload", "/%61dmin/models/bump/reload"]
            statuses = [httpx.post(f"{url}{path}", timeout=10).status_code for path in paths]
    finally:
        recorder.close()
    assert statuses == [403] * len(paths), statuses
    assert not recorder.requests, f"admin requests reached the api: {recorder.requests}"


def test_nginx_does_not_tell_its_version(tmp_path: Path) -> None:
    with running_nginx(tmp_path, [free_port()]) as (url, _):  # no replica: nginx answers 502
        r = httpx.get(f"{url}/readyz", timeout=10)
    assert r.status_code == 502, r.text
    assert r.headers["server"] == "nginx" and "nginx/" not in r.text, (r.headers["server"], r.text)


def raw_answer(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one request sent as ``request``'s bytes."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return int(status_line.split()[1]), headers, body


def test_nginx_answers_its_own_errors_in_the_api_s_json_format(tmp_path: Path) -> None:
    # A body over client_max_body_size, no replica to reach, a replica too slow: nginx answered
    # its HTML error pages, which a client of the JSON API cannot read.
    backend = HoldingBackend()  # holds requests under /held: slower than the timeout below
    (tmp_path / "slow").mkdir()
    try:
        shorter = lambda conf: conf.replace("proxy_read_timeout 120s;", "proxy_read_timeout 1s;")  # noqa: E731
        with running_nginx(tmp_path / "slow", [backend.port], edit=shorter) as (url, _):
            too_large = {
                path: raw_answer(
                    url,
                    f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {33 * 1024 * 1024}\r\nConnection: close\r\n\r\n".encode(),
                )
                for path in ("/v1/detect", "/v2/models/bump/infer")
            }
            slow = httpx.get(f"{url}/held", timeout=30)
        backend.release()
    finally:
        backend.close()
    (tmp_path / "none").mkdir()
    with running_nginx(tmp_path / "none", [free_port()]) as (url, _):  # nothing listens there
        unreachable = httpx.get(f"{url}/readyz", timeout=10)
        unreachable_v2 = httpx.get(f"{url}/v2/health/ready", timeout=10)

    for path, (status, headers, body) in too_large.items():
        assert status == 413, (path, status, body)
        assert headers["content-type"] == "application/json", (path, headers)
        field = "error" if path.startswith("/v2") else "detail"
        message = json.loads(body)[field]
        assert "body larger than 32 MiB" in message and "application/x-npy" in message, message
    assert slow.status_code == 504, slow.text
    assert slow.headers["content-type"] == "application/json"
    assert "did not answer within 120 s" in slow.json()["detail"], slow.text
    assert unreachable.status_code == 502 and unreachable.headers["retry-after"] == "1", unreachable.text
    assert unreachable.json() == {"detail": "no replica of the service could be reached; retry shortly"}
    assert unreachable_v2.status_code == 502
    assert unreachable_v2.json() == {"error": "no replica of the service could be reached; retry shortly"}


class HoldingBackend:
    """A replica that answers 200 `{}` to every request, except that a request for a path under
    /held waits until `release()`: requests in flight for as long as a test needs them."""

    def __init__(self) -> None:
        self.held = 0  # requests under /held that arrived
        self.released = threading.Event()
        backend, lock = self, threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def answer(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.startswith("/held"):
                    with lock:
                        backend.held += 1
                    backend.released.wait(timeout=30)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = answer

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 256  # socketserver's 5 would drop some of a burst of connections

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def release(self) -> None:
        self.released.set()

    def close(self) -> None:
        self.release()
        self.server.shutdown()
        self.server.server_close()


COMPOSE_NGINX = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["nginx"]
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="starts nginx as root with a chosen capability set: needs root and setpriv (util-linux)",
)


def compose_capabilities() -> list[str]:
    """What docker-compose.yml leaves nginx (cap_drop: [ALL], then cap_add), as setpriv names them."""
    assert COMPOSE_NGINX.get("cap_drop") == ["ALL"], (
        "compose's nginx keeps all of Docker's default capabilities"
    )
    return [c.lower().removeprefix("cap_") for c in COMPOSE_NGINX.get("cap_add", [])]


def nobody() -> tuple[str, int]:
    """`nobody` and its group, as nginx's `user` takes them, and its uid: the workers' user here,
    as `nginx` (uid 101) is in the image."""
    user = pwd.getpwnam("nobody")
    return f"{user.pw_name} {grp.getgrgid(user.pw_gid).gr_name}", user.pw_uid


@contextmanager
def nginx_as_root(
    backend_port: int, capabilities: list[str]
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """nginx started by root with only `capabilities` and no new privileges, as compose's
    cap_drop, cap_add and security_opt leave the image's nginx; the workers run as `nobody`.
    Yields the master process, its port and its directory, where cache/ stands for the image's
    /var/cache/nginx (root's, 0755), in which nginx makes the workers' temporary directories."""
    # Not pytest's tmp_path: it is root's alone, and the workers must reach their files.
    prefix = Path(tempfile.mkdtemp(prefix="shape-detector-nginx-"))
    try:
        prefix.chmod(0o755)
        (prefix / "cache").mkdir(mode=0o755)
        user, _ = nobody()
        conf, port = nginx_config(prefix, [backend_port], user=user, temp=prefix / "cache")
        bounding = ",".join(["-all", *(f"+{c}" for c in capabilities)])
        command = ["setpriv", "--no-new-privs", "--inh-caps=-all", f"--bounding-set={bounding}"]
        command += [NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")]
        with (prefix / "access.log").open("wb") as out:
            nginx = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield nginx, port, prefix
        finally:
            nginx.terminate()
            nginx.wait(timeout=10)
    finally:
        shutil.rmtree(prefix)


def text_of(path: Path) -> str:
    """A log's text so far; empty until nginx has created it."""
    return path.read_text() if path.exists() else ""


def user_ids(pid: int) -> set[int]:
    """The real, effective, saved and filesystem uids of a process."""
    uids = re.search(r"^Uid:\s+(.*)$", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    assert uids, f"no Uid line for process {pid}"
    return {int(uid) for uid in uids[1].split()}


@needs_root
def test_nginx_serves_with_only_the_capabilities_compose_gives_it() -> None:
    capabilities = compose_capabilities()
    backend = HoldingBackend()
    try:
        with nginx_as_root(backend.port, capabilities) as (nginx, port, prefix):
            assert eventually(lambda: "start worker process" in text_of(prefix / "error.log"), 10)
            # Larger than client_body_buffer_size: the worker writes it to a temporary file first.
            r = httpx.post(f"http://127.0.0.1:{port}/v1/detect", content=b"0" * 65536, timeout=10)
            workers = Path(f"/proc/{nginx.pid}/task/{nginx.pid}/children").read_text().split()
            worker_ids = [user_ids(int(pid)) for pid in workers]
            temp_owner = (prefix / "cache" / "client_body").stat().st_uid
            errors = (prefix / "error.log").read_text()
    finally:
        backend.close()
    assert r.status_code == 200, (r.status_code, r.text, errors)
    assert "not permitted" not in errors, errors
    _, uid = nobody()
    assert workers and worker_ids == [{uid}] * len(workers), f"workers' uids: {worker_ids}"
    assert temp_owner == uid, "the workers' temporary directory was not handed to them"


@needs_root
def test_nginx_needs_each_of_those_capabilities() -> None:
    # Each capability that compose adds is needed: without it nginx stops, or its workers do.
    capabilities = compose_capabilities()
    assert capabilities, "compose adds no capability to nginx"
    backend = HoldingBackend()
    try:
        for missing in capabilities:
            rest = [c for c in capabilities if c != missing]
            with nginx_as_root(backend.port, rest) as (_, _, prefix):
                log = prefix / "error.log"
                refused = eventually(lambda log=log: "(1: Operation not permitted)" in text_of(log), 10)
                errors = text_of(log)
            assert refused, f"nginx started without {missing}: drop it from cap_add\n{errors}"
    finally:
        backend.close()


def per_address_limit(conf: str) -> int:
    """default.conf's limit of requests in flight at once from one client address."""
    zone = re.search(r"^\s*limit_conn_zone \$binary_remote_addr zone=(\w+):\d+[km];", conf, re.MULTILINE)
    assert zone, "default.conf has no limit_conn_zone keyed by the client's address"
    limit = re.search(rf"^\s*limit_conn {zone[1]} (\d+);", conf, re.MULTILINE)
    assert limit, f"default.conf does not apply the zone {zone[1]} with limit_conn"
    return int(limit[1])


def test_an_address_beyond_its_limit_of_requests_in_flight_gets_429(tmp_path: Path) -> None:
    # One address holds `limit` requests in flight (the backend holds them): its next one gets
    # nginx's 429 at once, in the api's JSON error format; another address is still served.
    limit = per_address_limit(CONF.read_text())
    backend = HoldingBackend()
    held: list[socket.socket] = []
    try:
        with running_nginx(tmp_path, [backend.port]) as (url, _):
            port = int(url.rsplit(":", 1)[1])
            for _ in range(limit):
                held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
                held[-1].sendall(b"GET /held HTTP/1.1\r\nHost: shape-detector\r\n\r\n")
            assert eventually(lambda: backend.held == limit, 10), (
                f"{backend.held} of {limit} reached the backend"
            )
            over = httpx.post(f"{url}/v1/detect", json=SIGNAL, timeout=10)
            over_v2 = httpx.post(f"{url}/v2/models/bump/infer", json={"inputs": []}, timeout=10)
            # 127.0.0.2 is loopback too, and another client address.
            with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=10) as other:
                elsewhere = other.post(f"{url}/v1/detect", json=SIGNAL)
            backend.release()
            answered = [s.makefile("rb").readline() for s in held]
            after = httpx.post(f"{url}/v1/detect", json=SIGNAL, timeout=10)
    finally:
        for s in held:
            s.close()
        backend.close()
    assert over.status_code == 429, f"request {limit + 1} from one address: {over.status_code} {over.text}"
    assert over.headers["content-type"] == "application/json", over.headers
    assert over.headers["retry-after"] == "1"
    assert list(over.json()) == ["detail"] and str(limit) in over.json()["detail"], over.text
    assert over_v2.status_code == 429, over_v2.text
    assert list(over_v2.json()) == ["error"] and str(limit) in over_v2.json()["error"], (
        over_v2.text
    )  # /v2's format
    assert elsewhere.status_code == 200, "another address was refused too"
    assert answered == [b"HTTP/1.1 200 OK\r\n"] * limit, set(answered)
    assert after.status_code == 200, "the address stays refused after its requests finished"
