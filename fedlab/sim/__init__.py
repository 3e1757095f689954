"""Simulators: run many virtual clients on one machine (Flower's engine or in-process)."""
