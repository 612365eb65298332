"""Offline medical knowledge for decision support: HPO, disease-phenotype links, ICD-10-CM, drug names."""
