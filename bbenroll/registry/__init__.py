"""The registry: ``workers.toml``, its model, schema, reading and editing.

- :mod:`.model`: workers, their states and transitions, ``usable()`` (pure);
- :mod:`.schema`: the one definition of the file's keys, and from/to plain
  data (what TOML holds) by it; :mod:`.kinds`: the kinds of values (pure);
- :mod:`.store`: load, check, create and edit the file (one way in,
  ``inspect``; one way out, ``Editor.save``);
- :mod:`.tomlscan` and :mod:`.tomledit`: in-place edits that keep comments
  (``tomledit.apply``).
"""

# the one source of the registry's default path and its environment variable
DEFAULT_REGISTRY = "workers.toml"
ENV_REGISTRY = "BBENROLL_REGISTRY"
# what `bbenroll init` writes unless told otherwise; the backlogs fit a fleet reconnecting
# at once (endpoints.DEFAULT_BACKLOG says why)
DEFAULT_LISTEN = "tcp:9989:backlog=1024"
DEFAULT_PB = "tcp:9990:interface=127.0.0.1:backlog=1024"
DEFAULT_IDENTITY = "master.pem"
