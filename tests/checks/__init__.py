"""Tests of ``ctrlplane.checks``, one module per checker module."""
