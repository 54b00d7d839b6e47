"""The resumable tunnel: byte streams between buildbot-worker and the master's PB port.

``core`` is the protocol (pure, no I/O, time passed in); ``master_side`` and
``worker_side`` connect it to Foolscap and to Twisted transports.
"""
