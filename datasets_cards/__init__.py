"""Jinja2 templates for Hugging Face Hub dataset cards (README.md with YAML front matter)."""
