"""Deliberately broken plugins for the flowyard test suite."""
