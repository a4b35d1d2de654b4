"""Brokers: where events get their seq, where history lives, how events reach every node."""
