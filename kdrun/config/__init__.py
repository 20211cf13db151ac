"""The configuration: every key declared once, recipes, resume, plausibility checks."""
