import os
import shutil

import pytest

from dataplane.topology import Topology


def pytest_collection_modifyitems(config, items):
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: creates network namespaces, veth links and "
                                   "TUN devices (CI runs as root)")
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture
def topo():
    for tool in ("wireguard-go", "wg", "ip", "ping"):
        assert shutil.which(tool), f"{tool} is missing: run ./scripts/setup.sh"
    with Topology("dpt") as t:
        yield t
