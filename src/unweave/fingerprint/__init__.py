"""Fingerprints of training runs by the mechanism they learned, distances between them, and
clusters (`unweave fingerprint RUN...`)."""
