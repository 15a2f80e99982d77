"""Small random-weight models for every task, built offline and saved with
``save_pretrained`` so they load back through ``--model_id <folder>``
exactly as a Hub model does: ``python -m infergate_worker_hf.testmodels --out DIR``."""
