"""The staged pipeline (issue 11): raw → preprocess → features → score, one queue per stage."""
