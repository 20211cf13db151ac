"""Ways of training (strategies) and what they minimise (terms)."""
