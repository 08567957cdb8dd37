"""Unit tests: a package, so their module names (unit.test_doctor) stay apart from the
integration tests of the same name."""
