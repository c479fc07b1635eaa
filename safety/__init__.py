"""Safety layer: validation and sanitising of untrusted uploads before anything is queued."""
