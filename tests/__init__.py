"""The test suite as a package, so its helper modules import as ``tests.helpers`` etc."""
