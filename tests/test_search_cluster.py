"""Two Ray nodes on one machine (``ray.cluster_utils.Cluster``): joining by address, shared storage, placement."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import ray
from ray.cluster_utils import Cluster
from search_support import tiny_dataset, write_space

from motorsearch.errors import InputError
from motorsearch.search.cluster import Node, check_storage
from motorsearch.search.runner import run_search
from motorsearch.search.space_file import load_space


@pytest.fixture(scope="module")
def two_nodes():
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_dataset(tmp_path_factory.mktemp("cluster_data") / "sim")


def test_local_storage_on_several_nodes_is_refused(two_nodes: Cluster, data: Path, tmp_path: Path) -> None:
    path = write_space(tmp_path / "space.yaml", data=data, cache=tmp_path / "cache", storage=tmp_path / "runs",
                       address=two_nodes.address)  # joins the running cluster, as --address HOST:PORT does
    with pytest.raises(InputError) as info:
        run_search(load_space(path), verbose=0, out=io.StringIO())
    message = str(info.value)
    assert f"storage_path='{(tmp_path / 'runs').resolve()}' is a local folder, but the cluster has 2 nodes" in message
    assert "s3:// or gs:// URI" in message and "storage_shared: true" in message


def test_trials_land_on_both_nodes(two_nodes: Cluster, data: Path, tmp_path: Path) -> None:
    path = write_space(tmp_path / "space.yaml", data=data, cache=tmp_path / "cache", storage=tmp_path / "runs",
                       address=two_nodes.address, storage_shared=True, epochs=1, num_samples=2, max_concurrent=2,
                       resources={"cpu": 1})
    outcome = run_search(load_space(path), verbose=0, out=io.StringIO())
    assert outcome.complete and len(outcome.cluster.nodes) == 2
    node_ids = {result.metrics["node_id"] for result in outcome.results}
    assert node_ids == {node.node_id for node in outcome.cluster.nodes}  # one 1-CPU trial per 1-CPU node


@pytest.mark.parametrize(("storage", "shared", "nodes", "refused"), [
    ("/data/runs", False, 1, False),
    ("/data/runs", False, 2, True),
    ("/nfs/runs", True, 3, False),
    ("s3://bucket/runs", False, 2, False),
    ("gs://bucket/runs", False, 4, False),
])
def test_storage_rule(storage: str, shared: bool, nodes: int, refused: bool) -> None:
    alive = [Node(node_id=str(i), address="", resources={"CPU": 1.0}) for i in range(nodes)]
    if refused:
        with pytest.raises(InputError, match="storage_shared: true"):
            check_storage(storage, shared=shared, nodes=alive)
    else:
        check_storage(storage, shared=shared, nodes=alive)


def nodes_of(*resources: dict) -> list[Node]:
    return [Node(node_id=str(i), address="", resources=r) for i, r in enumerate(resources)]


@pytest.mark.parametrize(("cpu", "gpu", "nodes", "message"), [
    (1, 0, nodes_of({"CPU": 2.0}), None),
    (1, 0.25, nodes_of({"CPU": 4.0, "GPU": 1.0}), None),
    (4, 2, nodes_of({"CPU": 2.0}, {"CPU": 8.0, "GPU": 2.0}), None),
    (1, 1, nodes_of({"CPU": 2.0}), "resources.gpu=1 but the cluster has no GPU (cluster resources: CPU 2)"),
    (1, 0.5, nodes_of({"CPU": 2.0}, {"CPU": 2.0}), "resources.gpu=0.5 but the cluster has no GPU (cluster "
                                                   "resources: CPU 4)"),
    (1, 2, nodes_of({"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0, "GPU": 1.0}),
     "resources.gpu=2 but no node has more than 1 GPU(s) (cluster resources: CPU 16, GPU 2)"),
    (16, 0, nodes_of({"CPU": 8.0}, {"CPU": 8.0}), "resources.cpu=16 but no node has more than 8 CPU(s)"),
    (8, 1, nodes_of({"CPU": 8.0}, {"CPU": 4.0, "GPU": 1.0}), "resources.cpu=8 with resources.gpu=1 fits on no single node (nodes: CPU 8; CPU 4, GPU 1)"),
])
def test_resource_request_table(cpu: float, gpu: float, nodes: list[Node], message: str | None) -> None:
    from motorsearch.search.cluster import check_request
    from motorsearch.search.space import Resources

    if message is None:
        check_request(Resources(cpu=cpu, gpu=gpu), nodes)
    else:
        with pytest.raises(InputError) as info:
            check_request(Resources(cpu=cpu, gpu=gpu), nodes)
        assert message in str(info.value)
