"""bbenroll init: create the registry and the master's identity."""

from __future__ import annotations

import socket

import click

from bbenroll.cli import App, output_options

DEFAULT_PORT = 9989


@click.command("init")
@output_options
@click.option(
    "--location",
    "locations",
    multiple=True,
    metavar="HINT",
    help="Connection hint for FURLs, e.g. tcp:buildbot.example.org:9989 (repeatable). "
    "Default: tcp:<this host's FQDN>:9989.",
)
@click.option(
    "--listen",
    default=f"tcp:{DEFAULT_PORT}",
    show_default=True,
    metavar="ENDPOINT",
    help="Twisted server endpoint where the master's Foolscap service listens.",
)
@click.option(
    "--pb",
    default="tcp:9990:interface=127.0.0.1",
    show_default=True,
    metavar="ENDPOINT",
    help="The master's own PB port (loopback only).",
)
@click.option(
    "--identity",
    default="master.pem",
    show_default=True,
    metavar="PATH",
    help="Identity file to create, relative to the registry.",
)
@click.pass_obj
def command(app: App, locations: tuple[str, ...], listen: str, pb: str, identity: str) -> None:
    """Create the registry and the master's TLS identity; print the TubID."""
    from bbenroll.registry import store

    location = list(locations)
    if not location:
        host = socket.getfqdn()
        location = [f"tcp:{host}:{DEFAULT_PORT}"]
        app.out.warn(
            f"no --location given; FURLs will point at {location[0]} (change [master].location "
            "in the registry before handing out FURLs if workers cannot resolve that name)"
        )
    loaded = store.create(app.registry_path, location=location, listen=listen, pb=pb, identity=identity)
    master = loaded.registry.master
    if app.out.json_mode:
        app.out.json(
            {
                "registry": str(loaded.path),
                "identity": str(loaded.identity_path),
                "tubid": master.tubid,
                "location": list(master.location),
                "listen": master.listen,
                "pb": master.pb,
            }
        )
    else:
        app.out.data(master.tubid)
        app.out.info(
            f"created {loaded.path} and {loaded.identity_path} (mode 0600); "
            "add a worker with: bbenroll add NAME"
        )
