"""Every cluster YAML passes Ray's own autoscaler config validation, and the on-premise one
really runs a search on this machine: `ray up` over SSH, a Ray job, `ray down`."""

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
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO
from tests.sshd import SshNode, free_ports, ssh_node

CLUSTER_FILES = sorted(REPO.glob("cluster*.yaml"))
RAY_CLI = Path(sys.executable).parent / "ray"


def test_there_is_a_cluster_yaml() -> None:
    assert REPO / "cluster.yaml" in CLUSTER_FILES
    assert REPO / "cluster-local.yaml" in CLUSTER_FILES


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_config_validates(path: Path) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(path.read_text())
    validate_config(config)
    prepared = prepare_config(config)
    assert prepared["head_node_type"] in prepared["available_node_types"]
    if prepared["provider"]["type"] != "local":  # on-premise machines bring their own GPUs
        gpu_types = [name for name, spec in prepared["available_node_types"].items()
                     if spec.get("resources", {}).get("GPU")]
        assert gpu_types, "a cluster for promptsearch needs GPU worker types"
    assert any("promptsearch" in cmd for cmd in prepared["setup_commands"])


def test_a_broken_config_is_rejected(tmp_path: Path) -> None:
    import jsonschema
    from ray.autoscaler._private.util import validate_config

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    config["available_node_types"]["head"]["bogus_field"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(config)


# --- `ray up` -> `ray job submit` -> `ray down` on this machine, over SSH -----------------

LOCAL_CONFIG = REPO / "cluster-local.yaml"
JOB_MODEL = "smollm2-135m-instruct"


def _ray(*args: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(RAY_CLI), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


def _outer_ray_pids() -> dict[int, str]:
    """This pytest session's own Ray daemons (its GCS server and raylet)."""
    import psutil

    return {p.pid: p.name() for p in psutil.Process().children(recursive=True)
            if p.name() in ("gcs_server", "raylet")}


def _node_config(node: SshNode, ports: dict[str, int], path: Path) -> Path:
    """cluster-local.yaml with this machine's values: the node, the key, the checkout, ports."""
    config = yaml.safe_load(LOCAL_CONFIG.read_text())
    config["cluster_name"] = _cluster_name(path.parent)
    config["provider"]["head_ip"] = node.host
    assert config["provider"]["worker_ips"] == []
    config["auth"] = {"ssh_user": node.user, "ssh_private_key": str(node.key)}
    [setup] = config["setup_commands"]
    assert "PROMPTSEARCH_DIR=~/promptsearch " in setup
    config["setup_commands"] = [setup.replace("~/promptsearch", str(REPO), 1)]
    # Ports of their own, so that this head cannot clash with any other Ray on the machine.
    start = config["head_start_ray_commands"][-1]
    for flag, default, port in (("--port", 6379, ports["gcs"]),
                                ("--dashboard-port", 8265, ports["dashboard"])):
        assert f"{flag}={default}" in start
        start = start.replace(f"{flag}={default}", f"{flag}={port}")
    start += (f" --ray-client-server-port={ports['client']}"
              f" --dashboard-agent-listen-port={ports['agent']}"
              f" --metrics-export-port={ports['metrics']}")
    config["head_start_ray_commands"][-1] = start
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture
def outer_ray(ray_session: None) -> dict[int, str]:
    """This session's Ray, outside the node: the node's `ray stop` must spare it."""
    pids = _outer_ray_pids()
    assert sorted(pids.values()) == ["gcs_server", "raylet"], pids
    return pids


@pytest.mark.engine
def test_local_provider_up_job_down(outer_ray: dict[int, str], tmp_path: Path) -> None:
    """The on-premise config really runs: `ray up` over SSH, a search as a Ray job, `ray down`."""
    import ray

    from promptsearch.pipelines.engine.models import prepare_model

    # Short paths: Ray's Unix sockets live under RAY_TMPDIR and must stay under 108 bytes.
    work = Path(tempfile.mkdtemp(prefix="ps-node-"))
    try:
        # The node's own cache holds the prepared model (made by `make setup` on a real node)
        # and a fresh generation cache, so the job really generates.
        models = work / "cache" / "models"
        models.mkdir(parents=True)
        (models / JOB_MODEL).symlink_to(prepare_model(JOB_MODEL))
        ports = dict(zip(("gcs", "dashboard", "client", "agent", "metrics", "autoscaler_metrics",
                          "dashboard_metrics", "forward"), free_ports(8), strict=True))
        node_env = {"RAY_TMPDIR": str(work / "ray"), "PROMPTSEARCH_CACHE": str(work / "cache"),
                    "AUTOSCALER_METRIC_PORT": str(ports["autoscaler_metrics"]),
                    "DASHBOARD_METRIC_PORT": str(ports["dashboard_metrics"])}
        with ssh_node(work / "sshd", node_env) as node:
            _cycle(node, ports, work, tmp_path, outer_ray)
        # The session's Ray still works after both `ray stop`s ran on the node.
        assert ray.get(ray.remote(lambda: 41 + 1).remote(), timeout=60) == 42
    finally:
        shutil.rmtree(work, ignore_errors=True)
        control = _ssh_control_dir(_cluster_name(work))
        shutil.rmtree(control, ignore_errors=True)
        with contextlib.suppress(OSError):
            control.parent.rmdir()  # only when no other cluster uses it


def _cluster_name(work: Path) -> str:
    return f"promptsearch-{work.name}"


def _ssh_control_dir(cluster_name: str) -> Path:
    """Where Ray's SSH runner keeps a cluster's ControlMaster sockets (always under /tmp)."""
    import getpass
    import hashlib

    user = hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]
    return Path(f"/tmp/ray_ssh_{user}") / hashlib.sha256(cluster_name.encode()).hexdigest()[:10]


def _cycle(node: SshNode, ports: dict[str, int], work: Path, tmp_path: Path,
           outer: dict[int, str]) -> None:
    from ray.job_submission import JobStatus, JobSubmissionClient
    from ray.util.state import list_actors

    config = _node_config(node, ports, work / "cluster-local.yaml")
    # The node sees only its own processes (what `ray stop` there would kill), not this
    # session's Ray, which runs meanwhile on the same machine.
    inside = node.ssh("cat /proc/[0-9]*/comm")
    assert inside.returncode == 0 and "sshd" in inside.stdout.split(), inside.stderr
    assert not {"gcs_server", "raylet"} & set(inside.stdout.split()), inside.stdout
    assert all(_alive(pid) for pid in outer), outer
    # The CLI's own state (the local provider's node state, the config cache) stays in `work`.
    env = {**os.environ, "RAY_TMPDIR": str(work / "local"), "TMPDIR": str(work / "local")}
    (work / "local").mkdir()
    for name in ("RAY_ADDRESS", "RAY_AUTH_MODE"):  # set for this session's own Ray
        env.pop(name, None)
    up = _ray("up", "-y", "--no-config-cache", str(config), env=env, timeout=600)
    assert up.returncode == 0, up.stdout[-4000:] + up.stderr[-4000:]
    forward = None
    try:
        node_pids = node.pids()
        assert any("gcs_server" in c for c in node_pids.values()), node_pids
        # `ray up` ran `ray stop` on the node: it killed nothing outside the node's namespace.
        assert all(_alive(pid) for pid in outer), outer

        # The dashboard through `ray dashboard`'s SSH tunnel, as on a real cluster.
        forward = subprocess.Popen(
            [str(RAY_CLI), "dashboard", str(config), "--port", str(ports["forward"]),
             "--remote-port", str(ports["dashboard"])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=REPO,
            start_new_session=True)
        address = f"http://127.0.0.1:{ports['forward']}"
        _wait_http(f"{address}/api/version", forward)
        job_env = {**env, "RAY_ADDRESS": address}
        out = work / "runs" / "qa"
        submitted = _ray(
            "job", "submit", "--submission-id", "promptsearch-qa", "--",
            "promptsearch", "run", "--task", "qa", "--model", JOB_MODEL, "--trials", "2",
            "--chunks", "2", "--max-validation", "6", "--max-test", "4", "--engines", "1",
            "--out", str(out),
            env=job_env, timeout=600)
        assert submitted.returncode == 0, submitted.stdout[-4000:] + submitted.stderr[-4000:]
        status = _ray("job", "status", "promptsearch-qa", env=job_env, timeout=60)
        assert "Job 'promptsearch-qa' succeeded" in status.stdout, status.stdout + status.stderr
        info = JobSubmissionClient(address).get_job_info("promptsearch-qa")
        assert info.status == JobStatus.SUCCEEDED
        # The job's engine was an actor of this cluster (the job joined it, no Ray of its own).
        engines = list_actors(address=address, filters=[("class_name", "=", "EngineActor")])
        assert any(a.job_id == info.job_id for a in engines), engines

        fetched = tmp_path / "qa"
        fetch = _ray("rsync-down", str(config), f"{out}/", str(fetched), env=env, timeout=120)
        assert fetch.returncode == 0, fetch.stdout[-4000:] + fetch.stderr[-4000:]
        _check_job_run(fetched)
        # The job ran on the node, with the node's environment (its generation cache).
        assert any((work / "cache" / "generations").iterdir())
    finally:
        if forward is not None:
            os.killpg(forward.pid, signal.SIGTERM)
            forward.wait(timeout=30)
        down = _ray("down", "-y", str(config), env=env, timeout=300)
    assert down.returncode == 0, down.stdout[-4000:] + down.stderr[-4000:]
    # Nothing of the cluster (Ray daemons, workers, EngineCore) is left on the node: only the
    # SSH server ...
    deadline = time.monotonic() + 30
    while left := {p: c for p, c in node.pids().items() if not c.startswith("sshd")}:
        assert time.monotonic() < deadline, f"left after ray down: {left}"
        time.sleep(0.5)
    # ... and the session's Ray, outside the node, was not touched by its `ray stop`.
    assert all(_alive(pid) for pid in outer), outer


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"`ray dashboard` exited with {proc.returncode}"
        try:
            if requests.get(url, timeout=5).ok:
                return
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"no answer from {url}"
        time.sleep(0.5)


def _check_job_run(run_dir: Path) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["task"] == "qa" and summary["model"] == JOB_MODEL
    assert summary["trials"]["run"] == 2
    for split in ("validation", "test"):
        assert isinstance(summary["best"][split], float)
    assert isinstance(summary["baseline"]["test"], float)
    assert summary["generations"] > 0 and summary["cache"]["misses"] > 0
    rows = [json.loads(line) for line in
            (run_dir / "predictions" / "test.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    assert all(r["id"] and isinstance(r["output"], str) for r in rows)
    assert any(r["raw_output"].strip() for r in rows)
