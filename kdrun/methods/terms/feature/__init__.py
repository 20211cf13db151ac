"""Feature terms: from named stages or layers of both models; they may own trainable parts."""
