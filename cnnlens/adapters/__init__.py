"""The edges: images in, pictures and reports out, export, demo data."""
