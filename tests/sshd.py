"""A throw-away SSH server that makes this machine an on-premise Ray "node" for `ray up` tests.

Ray's SSH command runner always connects to port 22 of the node's IP (its auth config has no
port), so the server listens on port 22 of a free loopback address (127.a.b.c) instead of on a
free port. It runs in its own PID namespace with a private /proc: `ray stop`, which `ray up`
and `ray down` run on the node, then sees only the node's processes and cannot kill anyone
else's Ray. Killing the server (PID 1 of that namespace) kills everything started through it.
Sessions get their own HOME, Ray temp dir and Ray metric ports through sshd's SetEnv, so
nothing the node writes lands outside the test's directory.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = Path("/usr/sbin/sshd")
PACKAGES = {"sshd": "openssh-server", "ssh": "openssh-client", "ssh-keygen": "openssh-client",
            "rsync": "rsync"}
"""Commands `ray up` over SSH needs (it copies its bootstrap files with rsync), and their
Debian packages."""


@dataclass(frozen=True)
class SshNode:
    host: str
    """Loopback address the server listens on (port 22): the cluster's head_ip."""
    user: str
    key: Path
    """Private key that logs in as ``user``."""
    home: Path
    """HOME of every SSH session."""
    env: dict[str, str]
    """Environment every SSH session gets (SetEnv)."""
    pid: int
    """The sshd process, PID 1 of the node's PID namespace."""

    def ssh(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a command on the node as `ray up` would reach it."""
        return subprocess.run(
            ["ssh", "-i", str(self.key), "-o", "StrictHostKeyChecking=no",
             "-o", f"UserKnownHostsFile={os.devnull}", "-o", "IdentitiesOnly=yes",
             "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", f"{self.user}@{self.host}",
             command],
            capture_output=True, text=True, timeout=timeout)

    def pids(self) -> dict[int, str]:
        """Every process of the node's PID namespace (pid -> command line), sshd included."""
        namespace = os.readlink(f"/proc/{self.pid}/ns/pid")
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / "ns" / "pid") != namespace:
                    continue
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:
                continue  # exited meanwhile
            found[int(entry.name)] = cmdline
        return found


def ensure_ssh_tools() -> None:
    """Install the SSH server, client and rsync with apt when missing (CI starts bare)."""
    missing = sorted({pkg for cmd, pkg in PACKAGES.items()
                      if not (SSHD.is_file() if cmd == "sshd" else shutil.which(cmd))})
    if not missing:
        return
    if shutil.which("apt-get") is None:
        pytest.skip(f"needs {', '.join(missing)} and there is no apt-get to install them")
    if os.geteuid() != 0:
        pytest.fail(f"needs {', '.join(missing)}: run as root or "
                    f"'apt-get install -y {' '.join(missing)}' first")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Keep the package from starting a system-wide sshd (Docker images ship this file already).
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    if own_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
        done = subprocess.run(install, capture_output=True, text=True, env=env)
        if done.returncode != 0:  # a bare machine has no package lists yet
            subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env)
            done = subprocess.run(install, capture_output=True, text=True, env=env)
    finally:
        if own_policy:
            policy.unlink()
    if done.returncode != 0:
        pytest.fail(f"'{' '.join(install)}' failed: {done.stderr.strip()[-2000:]}")


def free_loopback_address(port: int = 22) -> str:
    """A 127.a.b.c address whose ``port`` nothing listens on."""
    rng = random.Random()
    for _ in range(50):
        host = f"127.{rng.randint(1, 254)}.{rng.randint(1, 254)}.{rng.randint(2, 254)}"
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError:
                continue
            return host
    pytest.fail(f"no loopback address has port {port} free (does an sshd listen on all "
                "addresses?); Ray's SSH runner cannot use another port")


def free_ports(count: int) -> list[int]:
    """Distinct TCP ports free on every address."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as s:
            s.bind(("", 0))
            port = s.getsockname()[1]
        if port not in ports:
            ports.append(port)
    return ports


@contextlib.contextmanager
def ssh_node(workdir: Path, env: dict[str, str] | None = None) -> Iterator[SshNode]:
    """Start sshd in its own PID namespace on a loopback address; kill it (and the node) after."""
    ensure_ssh_tools()
    workdir.mkdir(parents=True, exist_ok=True)
    key = workdir / "id_ed25519"
    host_key = workdir / "ssh_host_ed25519_key"
    for path in (key, host_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                       check=True, capture_output=True)
    authorized = workdir / "authorized_keys"
    shutil.copy(key.with_suffix(".pub"), authorized)
    home = workdir / "home"
    home.mkdir(exist_ok=True)
    (home / ".bashrc").touch()
    user = getpass.getuser()
    session_env = {"HOME": str(home), **(env or {})}
    host = free_loopback_address()
    config = workdir / "sshd_config"
    config.write_text("\n".join([
        f"ListenAddress {host}:22",
        f"HostKey {host_key}",
        f"PidFile {workdir / 'sshd.pid'}",
        f"AuthorizedKeysFile {authorized}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "PrintMotd no",
        "MaxSessions 50",
        "MaxStartups 50",
        "LogLevel ERROR",
        f"Subsystem sftp {_sftp_server()}",
        "SetEnv " + " ".join(f'"{k}={v}"' for k, v in session_env.items()),
        "",
    ]))
    # sshd refuses to start without its privilege-separation directory.
    privsep = Path("/run/sshd")
    own_privsep = not privsep.exists()
    if own_privsep:
        privsep.mkdir(mode=0o755, parents=True)
    log = (workdir / "sshd.log").open("w")
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc",
         str(SSHD), "-D", "-e", "-f", str(config)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        node = SshNode(host=host, user=user, key=key, home=home, env=session_env,
                       pid=_namespace_init(proc.pid))
        _wait_for_login(node, proc, workdir / "sshd.log")
        yield node
    finally:
        # unshare --kill-child SIGKILLs sshd, PID 1 of the namespace, and the kernel then
        # kills every process left in it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
        if own_privsep:
            with contextlib.suppress(OSError):
                privsep.rmdir()


def _sftp_server() -> str:
    for path in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                 "/usr/libexec/sftp-server"):
        if Path(path).is_file():
            return path
    return "internal-sftp"


def _namespace_init(unshare_pid: int, timeout: float = 10) -> int:
    """The pid (outside) of the forked child of ``unshare``: sshd, PID 1 inside."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children")
        with contextlib.suppress(OSError):
            pids = children.read_text().split()
            if pids:
                return int(pids[0])
        time.sleep(0.05)
    raise RuntimeError("unshare did not start sshd")


def _wait_for_login(node: SshNode, proc: subprocess.Popen[bytes], log: Path,
                    timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited ({proc.returncode}): {log.read_text()[-2000:]}")
        done = node.ssh("echo ready", timeout=10)
        if done.returncode == 0 and done.stdout.strip() == "ready":
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"cannot log in to the test sshd: {done.stderr.strip()} "
                               f"{log.read_text()[-2000:]}")
        time.sleep(0.2)
