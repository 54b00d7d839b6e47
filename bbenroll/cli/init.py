"""bbenroll init: create the registry and the master's identity."""

from __future__ import annotations

import ipaddress
import socket

import click

from bbenroll.cli.app import App
from bbenroll.cli.output import Output, Result
from bbenroll.cli.params import output_options
from bbenroll.endpoints import listen_port
from bbenroll.errors import BBEnrollError
from bbenroll.registry import DEFAULT_IDENTITY, DEFAULT_LISTEN, DEFAULT_PB

# what the FQDN lookup answers on a machine without a real name: no worker elsewhere can use it
UNUSABLE_HOSTS = frozenset(
    {"", "localhost", "localhost.localdomain", "localhost6", "localhost6.localdomain6", "ip6-localhost"}
)


class NoLocation(BBEnrollError):
    """No --location, and none can be derived from this host and --listen."""


def usable_host(name: str) -> bool:
    """Whether a host name could reach this machine from another one."""
    name = name.strip().rstrip(".").lower()
    if name in UNUSABLE_HOSTS or name.startswith("localhost."):
        return False
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return True
    return not (address.is_loopback or address.is_unspecified)


def default_location(listen: str, host: str) -> str:
    """``tcp:HOST:PORT`` with this host's name and the port --listen uses; refuses what cannot work."""
    port = listen_port(listen)
    if port is None:
        raise NoLocation(
            f"--listen {listen!r} has no TCP port to put in FURLs; give --location tcp:HOST:PORT"
        )
    if not usable_host(host):
        raise NoLocation(
            f"this machine's name is {host!r}, which other machines cannot use to reach it; "
            f"give --location tcp:HOST:{port} with a name or address workers can reach"
        )
    return f"tcp:{host}:{port}"


@click.command("init")
@output_options
@click.option(
    "--location",
    "locations",
    multiple=True,
    metavar="HINT",
    help="Connection hint for FURLs, e.g. tcp:buildbot.example.org:9989 (repeatable). "
    "Default: tcp:<this host's FQDN>:<the --listen port>.",
)
@click.option(
    "--listen",
    default=DEFAULT_LISTEN,
    show_default=True,
    metavar="ENDPOINT",
    help="Twisted server endpoint where the master's Foolscap service listens.",
)
@click.option(
    "--pb",
    default=DEFAULT_PB,
    show_default=True,
    metavar="ENDPOINT",
    help="The master's own PB port (loopback only).",
)
@click.option(
    "--identity",
    default=DEFAULT_IDENTITY,
    show_default=True,
    metavar="PATH",
    help="Identity file to create, relative to the registry.",
)
@click.pass_obj
def command(app: App, locations: tuple[str, ...], listen: str, pb: str, identity: str) -> Result:
    """Create the registry and the master's TLS identity; print the TubID."""
    from bbenroll.registry import store

    location = list(locations)
    if not location:
        location = [default_location(listen, socket.getfqdn())]
        app.out.warn(
            f"no --location given; FURLs will point at {location[0]} (change [master].location "
            "in the registry before handing out FURLs if workers cannot resolve that name)"
        )
    loaded = store.create(
        app.registry_path, location=location, listen=listen, pb=pb, identity=identity, now=app.now()
    )
    master = loaded.registry.master

    def show(out: Output) -> None:
        out.data(master.tubid)
        out.info(
            f"created {loaded.path} and {loaded.identity_path} (mode 0600); "
            "add a worker with: bbenroll add NAME"
        )

    document = {
        "registry": str(loaded.path),
        "identity": str(loaded.identity_path),
        "tubid": master.tubid,
        "location": list(master.location),
        "listen": master.listen,
        "pb": master.pb,
    }
    return Result(document, show)
