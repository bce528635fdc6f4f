"""The centre's web console for operators and reviewers (``docs/CONSOLE.md``), under ``/console/``."""
