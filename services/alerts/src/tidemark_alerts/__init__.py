"""Tidemark alerts."""
