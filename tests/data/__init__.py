"""Tests of fedlab.data."""
