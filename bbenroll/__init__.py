"""bbenroll: secure, one-string enrollment of Buildbot workers over Foolscap FURLs."""

__version__ = "0.1.0"
