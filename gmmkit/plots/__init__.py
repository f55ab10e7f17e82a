"""Everything plotly lives in this package; geometry is computed elsewhere and handed in."""
