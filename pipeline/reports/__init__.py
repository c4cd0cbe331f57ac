"""Result tables (markdown, CSV, JSON) and pictures."""
