"""Hardening tests share the studio fixtures of tests/conftest.py; helpers live in hardening_support."""
