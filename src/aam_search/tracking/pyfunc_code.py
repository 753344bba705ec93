"""MLflow "models from code" entry point of a promoted adapter (see ``tracking/pyfunc.py``).

MLflow runs this file when it loads the model; it must call ``mlflow.models.set_model``.
Do not import it from package code.
"""

import os

import mlflow.models

from aam_search.tracking.pyfunc import AdapterModel

# MLflow runs this file from the saved model's folder: the adapter is confined to it.
mlflow.models.set_model(AdapterModel(model_dir=os.path.dirname(os.path.abspath(__file__))))
