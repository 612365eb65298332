"""Model building: synthetic data, training, evaluation and export into model_repository/.

Imports the services' model contracts and pure cores; no serving module imports this package (checked by
import-linter in `make lint` and tests/test_architecture.py).
"""
