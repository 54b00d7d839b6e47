"""``bbenroll demo``: a real master, worker and build on loopback."""
