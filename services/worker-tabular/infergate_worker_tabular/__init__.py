"""infergate worker-tabular: XGBoost (``model.json``, ``model.ubj``,
``model.bst``), LightGBM (``model.txt``) and scikit-learn (``model.joblib``,
``model.pkl``) models behind the internal worker API's ``/predict``."""
