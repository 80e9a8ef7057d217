"""Evals built from real runs (issue 13): a stored run becomes a fixture file
(``capture``), fixtures are replayed through the real step code in an isolated namespace
(``replay``) and compared with the outcome they recorded (``outcome``), reported as a table
or JUnit XML (``report``); ``gate.run_gate`` is what a release promotion asks;
``policy_diff`` evaluates a candidate policy over stored proposals.

This package sits between the entry points and ``runtime.wiring``: a replay builds a
runtime through the composition root, so nothing below wiring may import it.
"""
