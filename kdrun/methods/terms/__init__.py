"""Loss terms, one file each: logit terms (logit/) and feature terms (feature/), registered by name."""
