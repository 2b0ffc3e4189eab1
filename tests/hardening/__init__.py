"""The hardening matrix (security.md): faults, malformed replies, bad input, secrets, fuzzing."""
