"""Every cluster YAML passes Ray's own autoscaler config validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

CLUSTER_FILES = sorted(REPO.glob("cluster*.yaml"))


def test_there_is_a_cluster_yaml() -> None:
    assert REPO / "cluster.yaml" in CLUSTER_FILES


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_config_validates(path: Path) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(path.read_text())
    validate_config(config)
    prepared = prepare_config(config)
    assert prepared["head_node_type"] in prepared["available_node_types"]
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
