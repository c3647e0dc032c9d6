"""glus: GLUS referring video object segmentation (global-local reasoning + SAM-2 memory bank)."""

__version__ = "0.1.0"
