"""Layer 6, reports: finished runs side by side from their ``metrics.json`` (``report``) and its
figures (``report_figures``)."""
