"""Command lines: `explain` (salience of whole data sets) and `faithfulness` (which salience to trust)."""
