"""Membership inference attacks on prediction scores: train, attack, calibrate, report."""
