"""How long the demo may take: the one source for the CLI's --timeout and the story.

Kept free of imports so that ``bbenroll --help`` (which imports every command
module) does not load the demo's machinery.
"""

DEFAULT_TIMEOUT = 180.0  # seconds for the whole demo; a run takes 5-10 s
MIN_TIMEOUT, MAX_TIMEOUT = 10.0, 3600.0
