"""The runtime image, built and run without a Docker engine.

The builder stage's instructions are replayed in order (ENV, WORKDIR, COPY, and each RUN
verbatim through /bin/sh) into a temporary directory standing for the image's root; the
runtime stage's COPYs and ENV are applied the same way, then its CMD runs there and its
HEALTHCHECK is run against it. Image paths map into that directory: /opt/venv becomes
<tmp>/root/opt/venv. Only the base image's own `python` and `pip` differ: this Python 3.11
and the pip of the test environment (with this machine's pip configuration and cache) stand
in for them. As on a read-only root filesystem, the service may write under /tmp only.
The HEALTHCHECK is also run against the repository's service listening on other addresses.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import httpx
import pytest
from packaging.utils import canonicalize_name

from tests.api.test_primer_figure import primer_signal
from tests.deploy.dockerfile import Instruction, parse, serve_pins, stage
from tests.deploy.processes import ROOT, clean_environ, free_port, start_repo_service, start_service

pytestmark = pytest.mark.slow

# Not part of the build context (.dockerignore), so never in the image.
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")


class ImageRoot:
    """A directory standing for the image's filesystem root."""

    def __init__(self, root: Path, host_path: str) -> None:
        self.root = root
        self.host_path = host_path  # what $PATH expands to: the base image's python and pip

    def path(self, image_path: str, cwd: Path | None = None) -> Path:
        if image_path.startswith("/"):
            return self.root / image_path.lstrip("/")
        assert cwd is not None, f"relative path {image_path!r} before any WORKDIR"
        return cwd / image_path

    def env_value(self, value: str) -> str:
        """Absolute paths mapped into the root, also in PATH-like lists; $PATH expanded."""
        parts = value.split(":")
        mapped = [
            self.host_path if p == "$PATH" else str(self.path(p)) if p.startswith("/") else p for p in parts
        ]
        return ":".join(mapped)

    def copy(self, instruction: Instruction, cwd: Path | None) -> None:
        """COPY from the build context (the repository)."""
        *sources, dest = instruction.args.split()
        target = self.path(dest, cwd)
        for source in sources:
            src = ROOT / source
            assert src.exists(), f"COPY {source}: not in the build context"
            if src.is_dir():
                shutil.copytree(src, target, ignore=IGNORED, dirs_exist_ok=True)
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target / src.name)


def replay_builder(image: ImageRoot, env: dict[str, str]) -> None:
    cwd: Path | None = None
    for ins in stage(parse(ROOT / "Dockerfile"), "builder").instructions:
        if ins.keyword == "ENV":
            env.update({k: image.env_value(v) for k, v in ins.env().items()})
        elif ins.keyword == "WORKDIR":
            cwd = image.path(ins.args, cwd)
            cwd.mkdir(parents=True, exist_ok=True)
        elif ins.keyword == "COPY":
            assert not ins.flags, f"builder COPY {ins.flags}: not replayable here"
            image.copy(ins, cwd)
        elif ins.keyword == "RUN":
            # A cache mount only changes where pip keeps its cache; here pip uses the user's.
            assert all(f.startswith("--mount=type=cache,") for f in ins.flags), ins.flags
            r = subprocess.run(["/bin/sh", "-c", ins.args], cwd=cwd, env=env, capture_output=True, text=True)
            assert r.returncode == 0, f"builder RUN {ins.args!r} failed:\n{r.stdout}\n{r.stderr}"
        else:
            pytest.fail(f"builder stage: the replay does not know {ins.keyword}; teach it or drop it")


def assemble_runtime(image: ImageRoot) -> tuple[dict[str, str], Path, Instruction, Instruction]:
    """The runtime stage's files and ENV; returns (env, workdir, HEALTHCHECK, CMD)."""
    runtime = stage(parse(ROOT / "Dockerfile"), "runtime")
    env: dict[str, str] = {}
    cwd: Path | None = None
    for ins in runtime.instructions:
        if ins.keyword == "COPY" and ins.flags:
            source, dest = ins.args.split()
            # The builder's files are already in place: both stages share this root.
            assert ins.flags == ["--from=builder"] and source == dest, f"runtime COPY {ins.flags} {ins.args}"
        elif ins.keyword == "COPY":
            image.copy(ins, cwd)
        elif ins.keyword == "ENV":
            env.update({k: image.env_value(v) for k, v in ins.env().items()})
        elif ins.keyword == "WORKDIR":
            cwd = image.path(ins.args, cwd)
            cwd.mkdir(parents=True, exist_ok=True)
        elif ins.keyword == "RUN":
            # Creating the user is all a runtime RUN may do: installs belong to the builder.
            assert "install" not in ins.args, f"runtime stage installs something: {ins.args}"
    assert cwd is not None, "runtime stage has no WORKDIR"
    return env, cwd, runtime.one("HEALTHCHECK"), runtime.one("CMD")


def files_outside_tmp(root: Path) -> dict[str, int]:
    """The image's files but /tmp, the one writable path in compose and Kubernetes."""
    paths = (p for p in root.rglob("*") if p.relative_to(root).parts[0] != "tmp")
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in paths}


def test_runtime_install_and_run_like_the_image(tmp_path: Path) -> None:
    host_path = f"{Path(sys.executable).parent}:{clean_environ()['PATH']}"
    image = ImageRoot(tmp_path / "root", host_path)

    replay_builder(image, {**clean_environ(), "PATH": host_path})
    venv_python = image.path("/opt/venv/bin/python")
    assert venv_python.exists(), "the builder stage made no virtualenv at /opt/venv"

    no_torch = subprocess.run([venv_python, "-c", "import torch"], capture_output=True, text=True)
    assert no_torch.returncode != 0, "torch is importable in the runtime virtualenv"
    assert "No module named 'torch'" in no_torch.stderr, no_torch.stderr
    assert not image.path("/opt/venv/bin/pip").exists(), "the runtime virtualenv ships pip"
    listing = "import importlib.metadata as m; print('\\n'.join(d.name + '==' + d.version for d in m.distributions()))"
    installed = subprocess.run([venv_python, "-c", listing], capture_output=True, text=True, check=True)
    versions = {canonicalize_name(n): v for n, v in (line.split("==") for line in installed.stdout.split())}
    assert (
        versions.pop("shape-detector")
        == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    )
    assert versions == serve_pins(), (
        "the runtime virtualenv holds other packages than requirements-serve.txt pins"
    )

    image_env, workdir, healthcheck, cmd = assemble_runtime(image)
    assert image_env["SHAPE_DETECTOR_HOST"] == "0.0.0.0"
    port = free_port()
    # Loopback instead of 0.0.0.0 on this shared machine; everything else as in the image.
    env = {
        **clean_environ(),
        **image_env,
        "SHAPE_DETECTOR_HOST": "127.0.0.1",
        "SHAPE_DETECTOR_PORT": str(port),
    }
    command = cmd.exec_form()
    assert shutil.which(command[0], path=env["PATH"]) == str(venv_python), (
        "CMD does not run the venv's python"
    )
    probe = healthcheck.exec_form()

    def healthcheck_exit_code(**extra_env: str) -> int:
        return subprocess.run(probe, env={**env, **extra_env}, capture_output=True, timeout=10).returncode

    before = files_outside_tmp(image.root)
    service = start_service(command, cwd=workdir, env=env, log_path=tmp_path / "service.log")
    try:
        service.wait_ready()
        assert healthcheck_exit_code() == 0, "HEALTHCHECK fails on a ready service"
        # Listening on every IPv4 address (the image's 0.0.0.0), or on all interfaces (an empty
        # host), the service answers on 127.0.0.1: the probe asks there.
        for every in ["0.0.0.0", ""]:
            assert healthcheck_exit_code(SHAPE_DETECTOR_HOST=every) == 0, (
                f"HEALTHCHECK fails with host {every!r}"
            )
        # A proxy in the container's environment (the Docker client's proxy configuration puts
        # one in every container) must not take the probe away from the service.
        proxy = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        assert healthcheck_exit_code(http_proxy=proxy, HTTP_PROXY=proxy) == 0, (
            "HEALTHCHECK goes through HTTP_PROXY instead of asking the service"
        )
        r = httpx.post(f"{service.url}/v1/detect", json={"signals": [primer_signal(1).tolist()]}, timeout=30)
        assert r.status_code == 200, r.text
        peaks = [p["index"] for p in r.json()["results"][0]["peaks"]]
        assert len(peaks) == 2 and abs(peaks[0] - 35) <= 2 and abs(peaks[1] - 255) <= 2, r.json()
        # The docs' assets are package data: they must be in the installed wheel too.
        asset = httpx.get(f"{service.url}/static/vendor/swagger-ui/swagger-ui-bundle.js")
        assert asset.status_code == 200, "the installed package lacks app/static"
    finally:
        code = service.stop()
    assert code == 0, f"exit code {code} after SIGTERM:\n{service.log()}"
    assert healthcheck_exit_code() != 0, "HEALTHCHECK passes with no service running"
    # Without SHAPE_DETECTOR_PORT the service listens on its default port: so does the probe.
    no_port = {k: v for k, v in env.items() if k != "SHAPE_DETECTOR_PORT"}
    unset = subprocess.run(probe, env=no_port, capture_output=True, text=True, timeout=10)
    assert "Error: 'SHAPE_DETECTOR_PORT'" not in unset.stderr, (
        f"HEALTHCHECK needs the variable:\n{unset.stderr}"
    )
    # As on a read-only root filesystem: the service wrote nothing into the image but /tmp.
    written = files_outside_tmp(image.root).items() ^ before.items()
    assert not written, f"the service wrote outside /tmp: {sorted(dict(written))}"


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.parametrize(
    ("listen", "configured"),
    [
        # One address, as a pod's IP would be: nothing answers on 127.0.0.1.
        ("127.0.0.2", "127.0.0.2"),
        pytest.param("::1", "::1", marks=pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")),
        # Every IPv6 address: with one worker the service listens on IPv6 only (asyncio and
        # uvloop set IPV6_V6ONLY), so 127.0.0.1 is refused and the probe asks ::1. The service
        # listens on ::1 alone here, not on every address of this shared machine.
        pytest.param("::1", "::", marks=pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback")),
    ],
)
def test_healthcheck_asks_the_address_the_service_listens_on(
    tmp_path: Path, listen: str, configured: str
) -> None:
    probe = stage(parse(ROOT / "Dockerfile"), "runtime").one("HEALTHCHECK").exec_form()
    service = start_repo_service(tmp_path, "service", host=listen)
    env = {
        **clean_environ(),
        "PATH": f"{Path(sys.executable).parent}:{clean_environ()['PATH']}",
        "SHAPE_DETECTOR_HOST": configured,
        "SHAPE_DETECTOR_PORT": service.url.rsplit(":", 1)[1],
    }
    try:
        service.wait_ready()
        r = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=10)
    finally:
        service.stop()
    assert r.returncode == 0, (
        f"HEALTHCHECK fails on a service listening on {listen} with host {configured!r}:\n{r.stderr}"
    )
