"""Shared types for every layer: the additive update, errors and configuration."""
