//! End-to-end tests of cim-rs live in `tests/`.
