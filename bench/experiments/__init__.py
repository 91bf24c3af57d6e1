"""Standalone measurements that go beyond a suite: run each as a module."""
