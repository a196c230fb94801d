"""Stand-ins for hardware libraries that are not installed where the tests run."""
