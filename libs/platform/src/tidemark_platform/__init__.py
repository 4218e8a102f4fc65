"""Tidemark platform."""
