//! End-to-end suites for streamkit (see `tests/`).
