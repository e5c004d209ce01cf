"""A multi-node Ray cluster on 127.0.0.1 (one raylet per node), kept in its own process for tests.

    python -m tests.cluster_keeper --workers 2 --cpus 1

``ray.cluster_utils.Cluster`` starts a head and worker raylets as child processes of the process that made
it, so the keeper holds it while drivers (``streamscore nightly --address``) come and go and can be killed.
It prints one JSON line ``{"address": ..., "nodes": [...]}``, then takes commands on stdin, one per line,
answering each with one JSON line:

    add CPUS [ROLE]  start a worker node (labelled streamscore.io/role=ROLE) -> {"node_id": ...}
    kill NODE_ID     SIGKILL that node's raylet and its workers (remove_node(allow_graceful=False)) -> {}
    nodes            -> {"nodes": [...]}  (alive node ids)
    quit             stop everything

Token authentication is off for this cluster (``RAY_AUTH_MODE=disabled`` for it and its drivers): the token
path has its own test (``tests/test_job_submit.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpus", type=float, default=1)
    args = parser.parse_args()
    os.environ["RAY_AUTH_MODE"] = "disabled"
    from ray.cluster_utils import Cluster

    # The head runs no tasks or actors (as on a real cluster, where it holds the driver and the GCS).
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = {}
    for _ in range(args.workers):
        node = cluster.add_node(num_cpus=args.cpus)
        workers[node.node_id] = node
    cluster.wait_for_nodes()

    def say(message: dict) -> None:
        print(json.dumps(message), flush=True)

    say({"address": cluster.address, "nodes": sorted(workers)})
    for line in sys.stdin:
        command, *rest = line.split()
        if command == "add":
            labels = {"streamscore.io/role": rest[1]} if len(rest) > 1 else {}
            node = cluster.add_node(num_cpus=float(rest[0]), labels=labels)
            cluster.wait_for_nodes()
            workers[node.node_id] = node
            say({"node_id": node.node_id})
        elif command == "kill":
            cluster.remove_node(workers.pop(rest[0]), allow_graceful=False)
            say({})
        elif command == "nodes":
            say({"nodes": sorted(workers)})
        elif command == "quit":
            break
    cluster.shutdown()


if __name__ == "__main__":
    main()
