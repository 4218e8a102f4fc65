"""Tidemark gateway."""
