"""The registry: ``workers.toml``, its model, schema, reading and editing.

- :mod:`.model`: workers, their states and transitions (pure);
- :mod:`.store`: load, check, create and edit the file (one way in, one way out);
- :mod:`.tomlscan` and :mod:`.tomledit`: in-place edits that keep comments.
"""

# the one source of the registry's default path and its environment variable
DEFAULT_REGISTRY = "workers.toml"
ENV_REGISTRY = "BBENROLL_REGISTRY"
