"""MLflow "models from code" entry point of a promoted adapter (see ``tracking/pyfunc.py``).

MLflow runs this file when it loads the model; it must call ``mlflow.models.set_model``.
Do not import it from package code.
"""

import mlflow.models

from aam_search.tracking.pyfunc import AdapterModel

mlflow.models.set_model(AdapterModel())
