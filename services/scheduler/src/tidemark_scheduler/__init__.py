"""Tidemark scheduler."""
