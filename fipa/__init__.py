"""FIPA reproduction library."""
