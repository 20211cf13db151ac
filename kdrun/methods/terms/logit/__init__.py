"""Logit terms: from the student's and the teacher's logits (and, for some, the labels)."""
