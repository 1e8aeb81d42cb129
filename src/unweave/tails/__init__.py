"""Activation tails: how heavy the tails of activation distributions are, per basis."""
