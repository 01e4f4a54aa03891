"""Engines for the tests, loaded by the local server through their import paths."""
