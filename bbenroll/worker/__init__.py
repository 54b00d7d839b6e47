"""The worker admin's side: ``bbenroll worker create`` (:mod:`.setup`)."""
