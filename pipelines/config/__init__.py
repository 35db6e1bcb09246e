"""The pipeline config language: a GitLab-CI-compatible subset (see parser.py)."""
