"""Turning run directories into tables."""
