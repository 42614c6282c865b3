"""Hosts for the tests: Linux network namespaces on a bridge of their own, and daemons in them.

:class:`Network` makes a bridge ``ipc-b<tag>`` with the address ``10.77.<n>.1/24`` (the
controller's side, in the test's own namespace) and, per host, a namespace ``ipc-<tag>-h<i>``
joined to the bridge by a veth pair, with the address ``10.77.<n>.<i+1>``.  Nothing is routed
anywhere else: traffic stays on that /24 and on 127.0.0.1.  Everything it makes is removed at
the test's cleanup, even when the test fails (:meth:`Network.close`, also safe to call twice).

Needs root and iproute2: :func:`skip_reason` says why not, for ``SkipTest``.
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
from typing import Optional

PREFIX = "ipc-"


def skip_reason() -> Optional[str]:
    """Why namespace tests cannot run here (None: they can)."""
    if os.geteuid() != 0:
        return "network namespace tests need root (ip netns, veth pairs, a bridge)"
    if shutil.which("ip") is None:
        return "network namespace tests need iproute2 (the ip command)"
    probe = f"{PREFIX}probe-{os.getpid()}"
    if _ip("netns", "add", probe, check=False).returncode != 0:
        return "this kernel or container does not allow network namespaces (ip netns add failed)"
    _ip("netns", "del", probe, check=False)
    return None


def _ip(*args: str, check: bool = True, netns: Optional[str] = None) -> subprocess.CompletedProcess:
    argv = ["ip", *(["netns", "exec", netns, "ip"] if netns else []), *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result


def _free_subnet() -> int:
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    for _ in range(200):
        n = random.randint(1, 254)
        if f"10.77.{n}." not in routes:
            return n
    raise RuntimeError("no free 10.77.N.0/24 subnet")


class Host:
    """One namespace on the bridge: ``name`` (the namespace), ``address``, ``link`` (its veth, our side)."""

    def __init__(self, name: str, address: str, link: str) -> None:
        self.name = name
        self.address = address
        self.link = link

    def argv(self, *command: str) -> list[str]:
        """``command`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.name, *command]

    def cut(self) -> None:
        """Pull the cable: the host's veth (our side) goes down."""
        _ip("link", "set", self.link, "down")

    def heal(self) -> None:
        _ip("link", "set", self.link, "up")

    def pids(self) -> list[int]:
        """Processes running in this namespace."""
        out = _ip("netns", "pids", self.name, check=False).stdout
        return [int(p) for p in out.split()]


class Network:
    """A bridge and ``hosts`` namespaces on it; ``controller_ip`` is the bridge's address."""

    def __init__(self, hosts: int) -> None:
        self.tag = f"{os.getpid() % 10000:04d}{random.randint(0, 99):02d}"
        self.subnet = _free_subnet()
        self.bridge = f"{PREFIX}b{self.tag}"
        self.controller_ip = f"10.77.{self.subnet}.1"
        self.hosts: list[Host] = []
        self._made: list[tuple[str, str]] = []
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._made.append(("link", self.bridge))
            _ip("addr", "add", f"{self.controller_ip}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i in range(1, hosts + 1):
                self.hosts.append(self._add_host(i))
        except BaseException:
            self.close()
            raise

    def _add_host(self, i: int) -> Host:
        name = f"{PREFIX}{self.tag}-h{i}"
        ours, theirs = f"{PREFIX}{self.tag}v{i}", f"{PREFIX}{self.tag}p{i}"  # at most 15 characters
        address = f"10.77.{self.subnet}.{i + 1}"
        _ip("netns", "add", name)
        self._made.append(("netns", name))
        _ip("link", "add", ours, "type", "veth", "peer", "name", theirs)
        self._made.append(("link", ours))
        _ip("link", "set", theirs, "netns", name)
        _ip("link", "set", ours, "master", self.bridge)
        _ip("link", "set", ours, "up")
        _ip("addr", "add", f"{address}/24", "dev", theirs, netns=name)
        _ip("link", "set", theirs, "up", netns=name)
        _ip("link", "set", "lo", "up", netns=name)
        return Host(name, address, ours)

    def close(self) -> None:
        """Kill what still runs in the namespaces, then remove them, the veths and the bridge."""
        for host in self.hosts:
            for pid in host.pids():
                try:
                    os.kill(pid, 9)
                except ProcessLookupError:
                    pass
        for kind, name in reversed(self._made):
            if kind == "netns":
                _ip("netns", "del", name, check=False)
            else:
                _ip("link", "del", name, check=False)
        self._made = []


def leftovers() -> list[str]:
    """Namespaces and links with our prefix that exist now (a test's cleanup check)."""
    names = _ip("netns", "list", check=False).stdout.split()
    links = _ip("-o", "link", check=False).stdout
    found = [n for n in names if n.startswith(PREFIX)]
    found += [w.rstrip(":").split("@")[0] for w in links.split() if w.startswith(PREFIX)]
    return found
