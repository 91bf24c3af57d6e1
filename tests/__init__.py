"""Tests; a package so that suites can name test-only plugins as 'tests.module:Class'."""
