"""Container ids from the cgroup paths each runtime really creates."""

from __future__ import annotations

import pytest

from osquery_netutil.events.containers import choose_path, container_id

ID = "4f3c2b1a" * 8
POD = "0d7c1e9a-3b52-4a57-9f8e-2c6f0a1b3d4e"


@pytest.mark.parametrize(
    "path",
    [
        f"/system.slice/docker-{ID}.scope",                                        # docker, systemd driver
        f"/docker/{ID}",                                                           # docker, cgroupfs driver
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD.replace('-', '_')}.slice/cri-containerd-{ID}.scope",
        f"/kubepods/burstable/pod{POD}/{ID}",                                       # kubelet, cgroupfs driver
        f"/kubepods.slice/kubepods-pod{POD.replace('-', '_')}.slice/crio-{ID}.scope",   # cri-o
        f"/kubepods/besteffort/pod{POD}/crio-{ID}",
        f"/machine.slice/libpod-{ID}.scope/container",                             # podman (root)
        f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope",   # rootless podman
        f"/libpod_parent/libpod-{ID}",                                             # podman, cgroupfs
        f"/system.slice/nerdctl-{ID}.scope",
        f"/default/{ID}",                                                          # containerd's ctr, namespace default
        f"/actions_job/{ID}",                                                      # GitHub Actions job container
    ],
)
def test_runtime_layouts_give_the_container_id(path: str) -> None:
    assert container_id(path) == ID


@pytest.mark.parametrize(
    "path",
    [
        "/", "/user.slice/user-0.slice/session-3.scope", "/system.slice/docker.service",
        "/system.slice/containerd.service", "/process_api/9da2f9eb613d3202251d0e69a758940d",   # this sandbox
        f"/system.slice/{ID}.mount", f"/{ID}", "/kubepods.slice/kubepods-besteffort.slice",
    ],
)
def test_host_paths_are_not_containers(path: str) -> None:
    assert container_id(path) == ""


def test_hybrid_hosts_take_the_hierarchy_that_names_the_container() -> None:
    # cgroupfs driver on a hybrid host: only the v1 hierarchies see the container.
    text = "\n".join([f"12:memory:/docker/{ID}", f"11:pids:/docker/{ID}", "1:name=systemd:/", "0::/"])
    assert choose_path(text) == f"/docker/{ID}"
    # This machine's sandbox: a v1 memory cgroup that is not a container; v2 says '/'.
    sandbox = "4:memory:/process_api/9da2f9eb613d3202251d0e69a758940d\n0::/\n"
    assert choose_path(sandbox) == "/"
    assert choose_path(f"0::/system.slice/docker-{ID}.scope\n") == f"/system.slice/docker-{ID}.scope"
    assert choose_path("") == ""
