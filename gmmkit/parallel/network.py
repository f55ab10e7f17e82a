"""Which network a job's ranks talk over: the loopback when every rank is on this machine, else the network of
this machine's interface that reaches the hosts; and host names checked before anything starts.

OpenMPI's TCP transports (the ranks' ``btl tcp`` and mpirun's out-of-band ``oob tcp``) use every interface they
find unless told otherwise. :func:`mca_network` tells them (as defaults that yield to the user's own settings,
:func:`gmmkit.parallel.launch.mpi_settings`):

* every rank here: the ranks talk through shared memory (``btl ^tcp``: no rank opens a TCP port at all) and
  mpirun's out-of-band channel uses the loopback only (``oob_tcp_if_include``). OpenMPI 4.1 still *binds*
  mpirun's own listening socket to every interface (its source binds ``INADDR_ANY``, and no parameter
  changes that); nothing uses it but the loopback;
* ranks on other hosts, all on one network with this machine: both transports use that network only
  (``btl_tcp_if_include``, ``oob_tcp_if_include`` as its CIDR, which names the same network on every host
  whatever its interfaces are called). Hosts on several networks: OpenMPI's own choice.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Collection, Mapping, Optional

import psutil

from ..errors import ConfigError
from .placement import Placement

LOOPBACK = "127.0.0.0/8"


def addresses(name: str) -> list[str]:
    """The IPv4 addresses ``name`` resolves to (empty when it does not)."""
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(name, None, socket.AF_INET)})
    except (socket.gaierror, UnicodeError):
        return []


def check_hosts(placement: Placement) -> None:
    """Refuse, naming the flag (``placement.hosts``, ``placement.hostfile``), a host whose name does not
    resolve: mpirun would otherwise fail after starting, with a page of its own words. (SLURM's nodes are
    named by SLURM.)"""
    if not placement.by_name:
        return
    for name in placement.names:
        if not addresses(name):
            field = f"placement.{placement.source}"
            where = f"{placement.origin}: " if placement.source != "hosts" else ""
            detail = f"{where}host {name!r} is unknown (its name does not resolve to an address)"
            raise ConfigError(f"{field}: {detail}", field=field, detail=detail)


def _local_interfaces() -> dict[str, ipaddress.IPv4Interface]:
    """This machine's IPv4 addresses, each with its network."""
    found = {}
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family == socket.AF_INET and entry.netmask:
                found[entry.address] = ipaddress.IPv4Interface(f"{entry.address}/{entry.netmask}")
    return found


def is_this_machine(name: str, local: Optional[dict] = None) -> bool:
    """Whether the host ``name`` is this machine (its name, or an address of one of its interfaces)."""
    local = _local_interfaces() if local is None else local
    if name in ("localhost", os.uname().nodename, os.uname().nodename.split(".")[0]):
        return True
    found = addresses(name)
    return bool(found) and all(ipaddress.ip_address(a).is_loopback or a in local for a in found)


def _route_source(address: str) -> Optional[str]:
    """The address of this machine that packets to ``address`` leave from (a UDP socket's connect sends
    nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((address, 9))
            return probe.getsockname()[0]
        except OSError:
            return None


def hosts_network(placement: Placement) -> Optional[str]:
    """``"local"`` when every host of ``placement`` is this machine; else the CIDR of this machine's network
    that reaches them all, or None when they are not all on one network with it (or a name does not
    resolve)."""
    if placement.is_local:
        return "local"
    local = _local_interfaces()
    remote = [name for name in placement.names if not is_this_machine(name, local)]
    if not remote:
        return "local"
    targets = [addresses(name) for name in remote]
    if not all(targets):
        return None
    source = _route_source(targets[0][0])
    interface = local.get(source) if source else None
    if interface is None:
        return None
    network = interface.network
    if all(ipaddress.ip_address(a) in network for found in targets for a in found):
        return str(network)
    return None


def mca_network(placement: Optional[Placement], taken: Mapping[str, str] = {}, chosen: Collection[str] = ()) -> dict:
    """The OpenMPI parameters (names without ``OMPI_MCA_``) that keep a job of ``placement`` on its network
    (module docstring); none when the placement is not known. Each yields to the user's or the site's setting
    (``taken``: names and values, :func:`gmmkit.parallel.launch.user_mca`), except that a parameter file's
    exclusion of transports (Debian's ``btl = ^uct,openib,ofi``) gets TCP added for a local job; one of the
    user's variables (``chosen``) or a setting of TCP's own stays as it is."""
    network = hosts_network(placement) if placement is not None else None
    if network is None:
        return {}
    found = {"oob_tcp_if_include": LOOPBACK if network == "local" else network}
    if network != "local":
        found["btl_tcp_if_include"] = network
    found = {name: value for name, value in found.items() if name not in taken}
    site = taken.get("btl")
    if network == "local" and "btl" not in chosen and not any(name.startswith("btl_tcp_") for name in taken):
        if site is None:
            found["btl"] = "^tcp"
        elif site.startswith("^"):
            found["btl"] = site if "tcp" in site[1:].split(",") else f"{site},tcp"
    return found
