"""Report layer: chapter tables, presentation, plots, the explorer, published numbers and the findings page.
May import cooplib.analysis, engine and everything below them; never book."""
