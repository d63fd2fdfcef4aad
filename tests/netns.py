"""Another machine for tests: a Linux network namespace joined to ours by a veth pair.

:class:`OtherHost` creates a uniquely named namespace and a veth pair on a
private /30 out of 10.213.0.0/16, so a server inside listens on an address
that is not loopback and sees its clients connect from another address, as
if it ran on a different machine. Nothing is routed beyond the pair. Needs
root and iproute2; without them :class:`~servers.ServerStartError` is raised
(tests must error, never skip).

Plain module: standard library plus servers.py, no pytest imports.
"""

from __future__ import annotations

import atexit
import ipaddress
import os
import pathlib
import shutil
import subprocess
from types import TracebackType
from typing import Self

from servers import MariaDB, PostgreSQL, ServerStartError

IP = shutil.which("ip") or "/usr/sbin/ip"

_NETWORK = ipaddress.IPv4Network("10.213.0.0/16")
_SUBNETS = _NETWORK.num_addresses // 4
# How many taken /30s (other runs, leftovers of killed runs) to skip before giving up.
_ATTEMPTS = 64

# Namespaces still present when the interpreter exits are removed. This runs
# before servers.py's own atexit hook (registered earlier), so the servers
# inside are stopped by close() first.
_LIVE: set[OtherHost] = set()


@atexit.register
def _remove_leftovers() -> None:
    for other in list(_LIVE):
        other.close()


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [IP, *args], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ServerStartError(f"cannot run {IP} {' '.join(args)}: {exc}") from None


def _ip_ok(*args: str) -> None:
    result = _ip(*args)
    if result.returncode != 0:
        raise ServerStartError(
            f"`ip {' '.join(args)}` failed with code {result.returncode} (root is needed): {result.stderr.strip()}"
        )


class OtherHost:
    """A network namespace reachable from here at ``address`` over a veth pair.

    ``host_address`` is our end of the pair, so servers inside see clients
    from here connect from it.
    """

    def __init__(self, base_dir: pathlib.Path) -> None:
        self.base_dir = pathlib.Path(base_dir).resolve()
        self.namespace = ""
        self.veth = ""  # our end; its peer inside is named veth[:-1] + "n"
        self.host_address = ""
        self.address = ""
        self.servers: list[MariaDB | PostgreSQL] = []

    @property
    def argv_prefix(self) -> list[str]:
        """Runs a command inside the namespace; ``ip`` execs it, so the pid stays the command's."""
        return [IP, "netns", "exec", self.namespace]

    def _reserve(self) -> int:
        """Create the namespace and veth pair under the first free index and return it.

        The names encode the index, so creating them atomically claims the /30
        against parallel runs.
        """
        first = os.getpid() % _SUBNETS
        for attempt in range(_ATTEMPTS):
            index = (first + attempt) % _SUBNETS
            namespace, veth = f"migtest-{index}", f"mt{index}h"
            result = _ip("netns", "add", namespace)
            if result.returncode != 0:
                if "File exists" in result.stderr:
                    continue
                raise ServerStartError(f"`ip netns add {namespace}` failed (root is needed): {result.stderr.strip()}")
            self.namespace = namespace
            result = _ip("link", "add", veth, "type", "veth", "peer", "name", f"mt{index}n", "netns", namespace)
            if result.returncode == 0:
                self.veth = veth
                return index
            # Ours, so ours to delete; a leftover veth of a killed run keeps its name taken.
            _ip_ok("netns", "del", namespace)
            self.namespace = ""
            if "File exists" not in result.stderr:
                raise ServerStartError(f"`ip link add {veth} type veth` failed: {result.stderr.strip()}")
        raise ServerStartError(f"no free namespace/veth names after {_ATTEMPTS} attempts from index {first}")

    def start(self) -> None:
        """Create the namespace and veth pair, address them and bring the links up."""
        if self.namespace:
            raise RuntimeError(f"{self!r} is already started")
        _LIVE.add(self)
        try:
            index = self._reserve()
            subnet = ipaddress.IPv4Network((int(_NETWORK.network_address) + 4 * index, 30))
            self.host_address, self.address = (str(a) for a in subnet.hosts())
            _ip_ok("addr", "add", f"{self.host_address}/30", "dev", self.veth)
            _ip_ok("link", "set", self.veth, "up")
            inner = self.veth[:-1] + "n"
            _ip_ok("-n", self.namespace, "addr", "add", f"{self.address}/30", "dev", inner)
            _ip_ok("-n", self.namespace, "link", "set", inner, "up")
            _ip_ok("-n", self.namespace, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def mariadb(self, name: str = "mariadb", timeout: float = 60) -> MariaDB:
        """Start a throwaway MariaDB inside, on ``address`` port 3306, with data under ``base_dir / name``."""
        if not self.namespace:
            raise RuntimeError(f"{self!r} is not started")
        server = MariaDB(self.base_dir / name, host=self.address, argv_prefix=self.argv_prefix)
        # Before start(), so that close() also stops a server that fails to become ready.
        self.servers.append(server)
        server.start(timeout)
        return server

    def postgresql(self, name: str = "postgresql", timeout: float = 60) -> PostgreSQL:
        """Start a throwaway PostgreSQL inside, on ``address`` port 5432, with data under ``base_dir / name``."""
        if not self.namespace:
            raise RuntimeError(f"{self!r} is not started")
        server = PostgreSQL(self.base_dir / name, host=self.address, argv_prefix=self.argv_prefix)
        self.servers.append(server)
        server.start(timeout)
        return server

    def close(self) -> None:
        """Stop the servers started here, then delete the veth pair and namespace. Idempotent.

        Every step is attempted even if an earlier one fails; the first error is raised.
        """
        errors: list[BaseException] = []
        for server in reversed(self.servers):
            try:
                server.stop()
            except Exception as exc:
                errors.append(exc)
        self.servers.clear()
        # Deleting our end removes both ends of the pair.
        for args in (("link", "del", self.veth), ("netns", "del", self.namespace)):
            if args[-1]:
                result = _ip(*args)
                if result.returncode != 0:
                    errors.append(RuntimeError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}"))
        self.veth = self.namespace = ""
        _LIVE.discard(self)
        if errors:
            raise errors[0]

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"{self.namespace} {self.host_address} <-> {self.address}" if self.namespace else "closed"
        return f"<{type(self).__name__} {state} {self.base_dir}>"
