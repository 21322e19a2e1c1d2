"""pgolf.dashboards: MLflow runs -> pandas tables, plots and HTML reports (no torch, no Ray)."""
