"""Reports for the data-protection officer (DESIGN.md §11) and the Art. 30 record."""
