"""Unit tests of the trace engine (no server)."""
